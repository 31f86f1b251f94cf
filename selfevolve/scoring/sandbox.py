"""Run untrusted Python in a bubblewrap sandbox: no network, no host files, an unprivileged uid, hard limits.

The code (an answer a model wrote, or anything a forged record carries) runs as

    bwrap  new mount, PID, network, IPC, UTS and cgroup namespaces (the network one has only a loopback
           of its own: nothing on the host, its 127.0.0.1 and abstract sockets included); read-only /usr
           (the interpreter, its standard library and shared libraries) and nothing else of the host: no
           /etc, /home, /root, /work, /run; a fresh /proc of its own PID namespace (no other process's
           environ); a minimal /dev; a size-capped tmpfs /tmp as its only writable place; an empty
           environment; its own session (no terminal to inject into); killed with its parent
      prlimit  address space, processes, file size, CPU seconds, open files, no core dumps
      setpriv  an unused uid (61000-61063, one per concurrent run) and gid 65534 (nogroup), no groups,
               no capabilities (bounding set emptied), no_new_privs
      python3  -I -S -B: isolated mode, no site-packages, no .pyc writes; the code is bound read-only at
               /answer.py and stdin is /dev/null (input() fails at once)

`/usr/bin/python3` (the system interpreter) runs the code, not the project's venv: answers need only the
standard library, and binding /usr alone keeps the venv and /root out of sight. Where it is missing the
running interpreter's own prefix is bound read-only instead.

When the timeout passes, the namespace's init is killed, which makes the kernel kill every process in the
namespace (a double-forked, setsid grandchild included) before the call returns; the same happens when the
code exits normally. Only the last 4 KiB of stderr are read back and stdout is discarded, so a flood of
output costs neither memory nor time. Nothing falls back to running unconfined: if bwrap is missing or the
namespaces cannot be made, `run_python` raises SandboxError and the code has not run.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from selfevolve.config import DEFAULTS, Settings
from selfevolve.errors import SandboxError

TOOL = "bwrap"  # looked up on PATH at each run; `make install` installs Debian's bubblewrap
PYTHON = "/usr/bin/python3"
# Each concurrent run gets its own unprivileged uid (no account needed), so the per-uid process limit of
# one answer's fork bomb is not every other check's; the group is nogroup.
UIDS = range(61000, 61064)
GID = 65534
_free_uids: queue.SimpleQueue[int] = queue.SimpleQueue()
for _uid in UIDS:
    _free_uids.put(_uid)
TAIL_BYTES = 4096
# The bootstrap announces on stderr that it runs inside the finished sandbox (every wrapper before it
# exits on failure without exec'ing the next), then runs /answer.py as __main__.
_READY = b"selfevolve-sandbox-ready\n"
_BOOT = ("import os,sys\nos.write(2,%r)\nsys.argv=['answer.py']\nsrc=open('/answer.py','rb').read()\n"
         "exec(compile(src,'answer.py','exec'),{'__name__':'__main__','__builtins__':__builtins__})" % _READY)


@dataclass(frozen=True)
class Limits:
    """The sandbox's limits: Settings.code_check_* (the defaults are those settings' defaults)."""

    timeout_s: float = DEFAULTS.code_check_timeout_s
    memory_mb: int = DEFAULTS.code_check_memory_mb  # address space per process
    max_procs: int = DEFAULTS.code_check_max_procs  # processes (and threads) of the sandbox uid, on the whole host
    file_mb: int = DEFAULTS.code_check_file_mb  # largest file it may write, its stderr included; also /tmp's size
    open_files: int = DEFAULTS.code_check_open_files

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.code_check_timeout_s, settings.code_check_memory_mb,
                   settings.code_check_max_procs, settings.code_check_file_mb, settings.code_check_open_files)


@dataclass(frozen=True)
class Result:
    returncode: int | None  # None when it was killed at the timeout
    stderr_tail: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"{name} not found (install bubblewrap: apt-get install bubblewrap)")
    return path


def _interpreter() -> tuple[str, list[str]]:
    """The interpreter to run, and the host directories (besides /usr) it needs bound read-only."""
    if os.path.exists(PYTHON):
        return PYTHON, []
    real = os.path.realpath(sys.executable)
    return real, [os.path.dirname(os.path.dirname(real))]


def _parents(path: str) -> list[str]:
    out = []
    while (path := os.path.dirname(path)) not in out and path:
        out.append(path)
    return out[::-1]


def _root_links() -> list[str]:
    """/bin, /lib, /lib64, /sbin as on the host: symlinks into /usr (merged /usr) or read-only binds."""
    args: list[str] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def command(limits: Limits, status_fd: int, src: str, uid: int = UIDS[0]) -> list[str]:
    """The argv that runs the bootstrap under every layer described in the module docstring."""
    python, extra = _interpreter()
    prlimit, setpriv = shutil.which("prlimit", path="/usr/bin:/bin"), shutil.which("setpriv", path="/usr/bin:/bin")
    if not (prlimit and setpriv and prlimit.startswith("/usr/") and setpriv.startswith("/usr/")):
        raise SandboxError("prlimit and setpriv (util-linux) must be installed under /usr/bin")
    file_bytes = limits.file_mb * 2**20
    argv = [_tool(TOOL), "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--json-status-fd", str(status_fd), "--ro-bind", "/usr", "/usr", *_root_links()]
    for d in extra:
        # Its parents are made traversable (bwrap copies /root's 0700 otherwise), but hold nothing else.
        parents = [p for p in _parents(d) if p != "/"]
        argv += [x for p in parents for x in ("--perms", "0755", "--dir", p)] + ["--ro-bind", d, d]
    argv += ["--ro-bind", src, "/answer.py", "--proc", "/proc", "--dev", "/dev",
             "--size", str(file_bytes), "--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv"]
    if os.geteuid() != 0:
        # Not root: a user namespace maps the sandbox uid onto the caller's own, already unprivileged one.
        argv += ["--unshare-user", "--uid", str(uid), "--gid", str(GID), "--disable-userns"]
    argv += ["--", prlimit, f"--as={limits.memory_mb * 2**20}", f"--nproc={limits.max_procs}",
             f"--fsize={file_bytes}", f"--cpu={math.ceil(limits.timeout_s) + 1}", "--core=0",
             f"--nofile={limits.open_files}", setpriv]
    if os.geteuid() == 0:
        argv += [f"--reuid={uid}", f"--regid={GID}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    return argv + ["--no-new-privs", "--", python, "-I", "-S", "-B", "-c", _BOOT]


def _child_pid(fd: int, wait_s: float) -> int | None:
    """The host pid of the namespace's init, from bwrap's first JSON status line."""
    buf = b""
    while b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], wait_s)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            return None
        buf += chunk
    try:
        return int(json.loads(buf.split(b"\n", 1)[0])["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def run_python(code: str, limits: Limits = Limits()) -> Result:
    """Run `code` in the sandbox; its exit status and stderr's tail. Raises SandboxError if it could not."""
    uid = _free_uids.get()
    try:
        return _run(code, limits, uid)
    finally:
        _free_uids.put(uid)  # only now: _run returns once every process of this run is gone


def _run(code: str, limits: Limits, uid: int) -> Result:
    deadline = time.monotonic() + limits.timeout_s
    with tempfile.TemporaryDirectory(prefix="selfevolve-sandbox-") as host, tempfile.TemporaryFile() as err:
        src = os.path.join(host, "answer.py")  # the directory is root's alone; the file is bound read-only
        with open(src, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(code)
        os.chmod(src, 0o644)
        status_r, status_w = os.pipe()
        try:
            try:
                p = subprocess.Popen(command(limits, status_w, src, uid), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, pass_fds=(status_w,),
                                     start_new_session=True, env={})
            except OSError as e:
                raise SandboxError(f"cannot start {TOOL}: {e}") from e
            finally:
                os.close(status_w)
            init = _pidfd(_child_pid(status_r, limits.timeout_s))
            try:
                returncode = p.returncode if _exited(p, deadline) else None
                _end(p, init)
            finally:
                if init is not None:
                    os.close(init)
        finally:
            os.close(status_r)
        err.seek(0)
        head = err.read(len(_READY))
        size = err.seek(0, os.SEEK_END)
        err.seek(max(len(_READY), size - TAIL_BYTES))
        tail = err.read().decode(errors="replace")
    if head != _READY:
        why = "it did not start within the time limit" if returncode is None else \
            (head.decode(errors="replace") + tail).strip()[-300:] or f"exit status {returncode}"
        raise SandboxError(f"{TOOL} could not run the code: {why}")
    return Result(returncode, tail)


def _exited(p: subprocess.Popen, deadline: float) -> bool:
    """Wait for bwrap to exit until the deadline, woken the moment it does (Popen.wait polls with sleeps)."""
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): Popen's polling wait
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(fd)
    if ready:
        p.wait()
    return bool(ready)


def _pidfd(pid: int | None) -> int | None:
    """A pidfd of the namespace's init, taken while bwrap (its parent, which alone reaps it) still runs, so
    it is that process and no later one with the same pid."""
    try:
        return os.pidfd_open(pid) if pid else None
    except (AttributeError, OSError):
        return None


def _end(p: subprocess.Popen, init: int | None) -> None:
    """Kill the namespace's init, the code's exit or timeout alike. The kernel then kills every process in
    the namespace (a setsid grandchild too), and only once they are all gone does the init count as exited,
    so when this returns nothing the code started is left. bwrap itself is reaped last."""
    if init is not None:
        try:
            signal.pidfd_send_signal(init, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already
        select.select([init], [], [], 5)
    if p.poll() is None:  # without a pidfd, bwrap's death kills the init (--die-with-parent)
        p.kill()
    p.wait()
