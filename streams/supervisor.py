"""Supervisor of the local stack's workers: starts each, restarts one that dies with backoff, records it all.

`selfevolve up` starts this process detached (streams/stack.py); it starts the stream and model workers,
waits on them, and restarts one that exits after a delay that doubles with each failure in a row (from
`supervisor_backoff_s` to `supervisor_backoff_max_s`) and resets once a worker has stayed up for
`supervisor_stable_s`. Each worker restarts on its own schedule: one of N serve workers dying does not touch
its peers. A worker that serves /ready (the stream workers) is probed until it answers ready, every
READY_PROBE_S, and its state records whether and since when it is. Its state (pids, restarts, last exit
code and time, readiness) is a JSON file under settings.home that `selfevolve status` reads. A worker
stopped on purpose (`Stack.kill`, which leaves a `<name>.held` marker next to its pid file) is not
restarted until the next `up` removes the marker. On
SIGTERM (`selfevolve down`) it stops every worker (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from selfevolve.config import Settings
from streams.stack import SERVE

log = logging.getLogger("selfevolve.supervisor")
NAME = "supervisor"
STATE_FILE = "supervisor.json"
STOP_TIMEOUT_S = 20.0
POLL_S = 0.2
READY_PROBE_S = 1.0  # between /ready probes of one worker (until ready, then every READY_RECHECK_S)
READY_RECHECK_S = 10.0


def backoff(failures: int, base_s: float = 1.0, max_s: float = 60.0) -> float:
    """Seconds to wait before restarting a worker that has died `failures` times in a row: none before the
    first start, then base_s, doubling each time, never over max_s."""
    if failures <= 0:
        return 0.0
    # Past 2**64 the doubling has long hit the cap; bounding the exponent keeps the float finite.
    return min(max_s, base_s * 2.0 ** min(failures - 1, 64))


@dataclass
class Worker:
    """What the supervisor knows of one worker; the JSON state file holds these."""

    name: str
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0  # starts after the first
    failures: int = 0  # exits in a row without staying up supervisor_stable_s (sets the backoff)
    last_exit: int | None = None  # exit code; negative: killed by that signal
    last_exit_at: float | None = None
    next_start_at: float = 0.0
    held: bool = False
    port: int | None = None  # its /ready port, if it serves one
    ready: bool | None = None  # the last /ready probe's answer (None: no port, or not probed since its start)
    ready_at: float | None = None  # when this start first answered ready
    next_probe_at: float = 0.0


def http_ready(port: int, timeout_s: float = 0.5) -> bool:
    """Whether the worker on 127.0.0.1:port answers its /ready page with ready: true."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=timeout_s) as r:
            return bool(json.loads(r.read() or b"{}").get("ready"))
    except (OSError, ValueError):  # refused, timed out, reset, or not JSON: not ready
        return False


def supervisor_service(model_workers: int, backends: str, live: bool, serve_workers: int | None = None):
    """The Service that `Stack.up` starts: this module, told which workers to run."""
    from streams.stack import Service

    argv = [sys.executable, "-m", "streams.supervisor", "--model-workers", str(model_workers),
            "--backends", backends]
    argv += ["--serve-workers", str(serve_workers)] if serve_workers is not None else []
    return Service(NAME, tuple(argv + (["--live"] if live else [])))


def hold(pids: Path, name: str) -> None:
    """Mark a worker as stopped on purpose, so the supervisor does not restart it."""
    if name != NAME and pids.is_dir():
        (pids / f"{name}.held").touch()


def release_held(pids: Path) -> None:
    """Let the supervisor start every held worker again (what `up` does)."""
    for marker in pids.glob("*.held") if pids.is_dir() else ():
        marker.unlink(missing_ok=True)


def state_path(settings: Settings) -> Path:
    return settings.home / STATE_FILE


def read_state(settings: Settings) -> dict:
    """The supervisor's last written state ({} when there is none or it cannot be read)."""
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


class Supervisor:
    """Runs `services` through `spawn(service) -> Popen` (Stack.spawn: detached, logged, with a pid file)."""

    def __init__(self, settings: Settings, services: list, spawn, pids: Path, probe=http_ready) -> None:
        self.settings, self.spawn, self.pids, self.probe = settings, spawn, pids, probe
        self.services = {svc.name: svc for svc in services}
        self.workers = {name: Worker(name, port=getattr(svc, "ready_port", None))
                        for name, svc in self.services.items()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.started_at = time.time()

    def run(self) -> None:
        """Supervise until stop() (SIGTERM), then stop every worker."""
        self.stop_orphans()
        self.write()
        try:
            while not self.stopping:
                if self.step(time.time()):
                    self.write()
                time.sleep(POLL_S)
        finally:
            self.stop_all()
            self.write()

    def stop(self, *_: object) -> None:
        self.stopping = True

    def step(self, now: float) -> bool:
        """Reap exited workers and start those whose time has come; returns whether anything changed."""
        changed = False
        for name, w in self.workers.items():
            held = (self.pids / f"{name}.held").exists()
            if w.held and not held:  # released by `up`: start it now, as a fresh start
                w.next_start_at, w.failures = now, 0
            changed |= held != w.held
            w.held = held
            proc = self.procs.get(name)
            if proc is not None:
                code = proc.poll()
                if code is None:
                    changed |= self._probe(w, now)
                    continue
                self._exited(w, code, now)
                changed = True
            if not w.held and not self.stopping and now >= w.next_start_at:
                self._start(w, now)
                changed = True
        return changed

    def _probe(self, w: Worker, now: float) -> bool:
        """Ask a running worker's /ready when due; returns whether its readiness changed."""
        if w.port is None or now < w.next_probe_at:
            return False
        ready = self.probe(w.port)
        w.next_probe_at = now + (READY_RECHECK_S if ready else READY_PROBE_S)
        if ready and w.ready_at is None:
            w.ready_at = now
            log.info("%s ready on port %d, %.1f s after its start", w.name, w.port, now - (w.started_at or now))
        changed, w.ready = ready != w.ready, ready
        return changed

    def _exited(self, w: Worker, code: int, now: float) -> None:
        del self.procs[w.name]
        w.ready, w.ready_at, w.next_probe_at = None, None, 0.0
        stable = w.started_at is not None and now - w.started_at >= self.settings.supervisor_stable_s
        w.failures = 1 if stable else w.failures + 1
        w.pid, w.last_exit, w.last_exit_at = None, code, now
        w.next_start_at = now + backoff(w.failures, self.settings.supervisor_backoff_s,
                                        self.settings.supervisor_backoff_max_s)
        (self.pids / f"{w.name}.pid").unlink(missing_ok=True)
        if w.held:
            log.info("%s exited with %s, stopped on purpose: held until the next up", w.name, code)
        else:
            log.warning("%s exited with %s; restart %d in %.1f s", w.name, code, w.restarts + 1,
                        w.next_start_at - now)

    def _start(self, w: Worker, now: float) -> None:
        if w.started_at is not None:
            w.restarts += 1
        try:
            proc = self.spawn(self.services[w.name])
        except OSError as e:  # e.g. a missing interpreter: count it as an exit and back off
            log.error("cannot start %s: %s", w.name, e)
            w.started_at = now
            self.procs[w.name] = _Failed()
            return
        self.procs[w.name] = proc
        w.pid, w.started_at = proc.pid, now
        w.ready, w.ready_at, w.next_probe_at = (None if w.port is None else False), None, now + READY_PROBE_S
        log.info("started %s (pid %d)", w.name, proc.pid)

    def stop_orphans(self) -> None:
        """Stop workers a previous supervisor left running (it was killed): this one starts its own."""
        orphans = []
        stale = {f.stem for f in self.pids.glob(f"{SERVE}-*.pid")} if self.pids.is_dir() else set()
        for name in sorted(set(self.services) | stale):  # a previous `up` may have run more serve workers
            try:
                pid = int((self.pids / f"{name}.pid").read_text())
            except (OSError, ValueError):
                continue
            if _alive(pid):
                log.warning("stopping %s (pid %d), left running by a previous supervisor", name, pid)
                _signal(pid, signal.SIGTERM)
                orphans.append(pid)
        deadline = time.time() + STOP_TIMEOUT_S
        while any(_alive(p) for p in orphans) and time.time() < deadline:
            time.sleep(0.1)
        for pid in orphans:
            if _alive(pid):
                _signal(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """SIGTERM every worker's process group, wait up to STOP_TIMEOUT_S, then SIGKILL what is left."""
        running = {n: p for n, p in self.procs.items() if p.poll() is None and p.pid > 0}
        for p in running.values():
            _signal(p.pid, signal.SIGTERM)
        deadline = time.time() + STOP_TIMEOUT_S
        while any(p.poll() is None for p in running.values()) and time.time() < deadline:
            time.sleep(0.1)
        for name, p in running.items():
            if p.poll() is None:
                log.warning("%s did not stop in %.0f s: killing it", name, STOP_TIMEOUT_S)
                _signal(p.pid, signal.SIGKILL)
                p.wait()
        for name, p in self.procs.items():
            w = self.workers[name]
            w.pid, w.last_exit, w.last_exit_at = None, p.poll(), time.time()
            (self.pids / f"{name}.pid").unlink(missing_ok=True)
        self.procs.clear()

    def write(self) -> None:
        state = {"pid": os.getpid(), "started_at": self.started_at, "stopping": self.stopping,
                 "workers": {n: asdict(w) for n, w in self.workers.items()}}
        path = state_path(self.settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)  # readers never see half a file


class _Failed:
    """A start that failed: looks like a process that exited with 127 at once."""

    pid = -1

    def poll(self) -> int:
        return 127

    def wait(self) -> int:
        return 127


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie, or a pid reused by another program's process, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"python" in cmdline.lower()


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker's group: its own children (e.g. code checks) go with it
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    from streams.stack import Service, Stack, services

    parser = argparse.ArgumentParser(prog="selfevolve-supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--model-workers", type=int, default=1)
    parser.add_argument("--backends", default="replay")
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--serve-workers", type=int, default=None, help="default: settings.serve_workers")
    parser.add_argument("--service", action="append", default=[], metavar="NAME=JSON_ARGV",
                        help="supervise this command instead of the stack's workers (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.load()
    stack = Stack(settings)
    todo = services(settings, args.model_workers, args.backends, args.live, args.serve_workers)
    if args.service:
        todo = [Service(name, tuple(json.loads(argv_json)))
                for name, _, argv_json in (s.partition("=") for s in args.service)]
    sup = Supervisor(settings, todo, stack.spawn, stack.pids)
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    sup.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
