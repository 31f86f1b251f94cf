"""Each attack a model answer's code made on the old code check, tried on the sandbox: every one is refused.

The attack code reports on its last stderr line, `RESULT <json>`, what it managed; no broker is needed.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from selfevolve.scoring import checkers, sandbox
from selfevolve.errors import SandboxError

LIMITS = sandbox.Limits(timeout_s=5.0)


def _attack(code: str, limits: sandbox.Limits = LIMITS) -> dict:
    """Run `code` in the sandbox; what it reported with report(...)."""
    prelude = "import json, os, sys\ndef report(**kw):\n    sys.stderr.write('RESULT ' + json.dumps(kw) + '\\n')\n"
    r = sandbox.run_python(prelude + textwrap.dedent(code), limits)
    last = r.stderr_tail.strip().splitlines()[-1] if r.stderr_tail.strip() else ""
    assert last.startswith("RESULT "), f"the attack did not report (exit {r.returncode}): {r.stderr_tail[-500:]}"
    return json.loads(last[len("RESULT "):])


def _processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds `marker` (this test's own process aside)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and int(pid) != os.getpid():
            found.append(int(pid))
    return found


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/shadow", "/root/.bashrc", "/work/main/README.md",
                                  "/proc/self/../1/environ"])
def test_host_files_cannot_be_read(path):
    got = _attack(f"""
        try:
            data = open({path!r}, "rb").read()
        except OSError as e:
            report(read=False, error=type(e).__name__)
        else:
            report(read=True, head=data[:40].decode(errors="replace"))
    """)
    assert got["read"] is False, got


def test_the_host_filesystem_is_invisible_and_read_only():
    got = _attack("""
        report(root=sorted(os.listdir("/")), etc=os.path.exists("/etc"), home=os.path.exists("/root"),
               work=os.path.exists("/work"), run=os.path.exists("/run"), sys=os.path.exists("/sys"))
    """)
    allowed = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "proc", "dev", "tmp", "answer.py"}
    assert set(got.pop("root")) <= allowed
    assert not any(got.values()), got


def test_writes_stay_in_the_private_tmp(tmp_path):
    tag = uuid.uuid4().hex
    targets = [f"/tmp/pwned-{tag}", str(tmp_path / f"pwned-{tag}"), f"/work/main/pwned-{tag}",
               f"/usr/pwned-{tag}", f"/dev/shm/pwned-{tag}"]
    got = _attack(f"""
        wrote = {{}}
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                wrote[path] = True
            except OSError:
                wrote[path] = False
        report(wrote=wrote, cwd=os.getcwd())
    """)
    assert got["cwd"] == "/tmp" and got["wrote"][f"/tmp/pwned-{tag}"], "the private tmp must be writable"
    assert not any(got["wrote"][p] for p in targets[2:4]), got
    for path in targets:
        assert not os.path.exists(path), f"{path} appeared on the host"


def test_no_network_not_even_the_host_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    abstract = f"\0selfevolve-test-{uuid.uuid4().hex}"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(abstract)
    unix.listen(1)
    unix.setblocking(False)
    port = srv.getsockname()[1]
    try:
        got = _attack(f"""
            import socket
            out = {{}}
            for name, family, addr in [("tcp", socket.AF_INET, ("127.0.0.1", {port})),
                                       ("internet", socket.AF_INET, ("1.1.1.1", 53)),
                                       ("unix", socket.AF_UNIX, {abstract!r})]:
                s = socket.socket(family)
                s.settimeout(1)
                try:
                    s.connect(addr)
                    out[name] = True
                except OSError:
                    out[name] = False
            out["interfaces"] = [n for _, n in socket.if_nameindex()]
            report(**out)
        """)
        assert not (got["tcp"] or got["internet"] or got["unix"]), got
        assert got["interfaces"] == ["lo"], got
        for s in (srv, unix):
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        srv.close()
        unix.close()


def test_it_runs_unprivileged():
    got = _attack("""
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        report(uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), groups=os.getgroups(),
               cap_eff=status["CapEff"].strip(), cap_bnd=status["CapBnd"].strip(),
               no_new_privs=status["NoNewPrivs"].strip())
    """)
    assert got["uid"] == got["euid"] and got["uid"] in sandbox.UIDS and 0 not in sandbox.UIDS
    assert got["gid"] == sandbox.GID and got["groups"] == []
    assert int(got["cap_eff"], 16) == 0 and int(got["cap_bnd"], 16) == 0 and got["no_new_privs"] == "1"


def test_the_environment_and_other_processes_are_out_of_sight(monkeypatch):
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("SELFEVOLVE_OPENAI_API_KEY", secret)
    got = _attack(f"""
        seen = []
        for pid in [p for p in os.listdir("/proc") if p.isdigit()] + [{os.getpid()}, {os.getppid()}]:
            for part in ("environ", "cmdline"):
                try:
                    if {secret!r}.encode() in open(f"/proc/{{pid}}/{{part}}", "rb").read():
                        seen.append((pid, part))
                except OSError:
                    pass
        report(environ=dict(os.environ), seen=seen, ppid_environ=os.getppid(),
               pids=sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    """)
    assert secret not in json.dumps(got) and got["seen"] == []
    assert not any(k.startswith("SELFEVOLVE") for k in got["environ"]) and len(got["environ"]) <= 2, got
    assert max(got["pids"]) < 10, f"the host's processes are visible: {got['pids']}"


def test_fork_bombs_hit_the_process_limit():
    got = _attack("""
        import time
        started = 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            started += 1
        report(started=started)
    """)
    assert got["started"] < LIMITS.max_procs, got


def test_a_fork_bomb_does_not_starve_a_check_running_beside_it():
    """Each run has its own uid, so one answer's processes do not count against another's limit."""
    import threading

    bomb = threading.Thread(target=sandbox.run_python, args=(textwrap.dedent("""
        import os, time
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(10)
                    os._exit(0)
            except OSError:
                time.sleep(0.05)
    """), sandbox.Limits(timeout_s=4.0)))
    bomb.start()
    time.sleep(1.0)  # the bomb holds its whole process limit now
    try:
        tag = uuid.uuid4().hex
        c = checkers.run_code(f"```python\nimport os  # {tag}\nif os.fork() == 0:\n    os._exit(0)\n"
                              "os.wait()\nassert 1 + 1 == 2\n```", LIMITS)
        assert c.passed_own_tests, c
    finally:
        bomb.join()


def test_a_memory_bomb_fails_inside_the_sandbox():
    got = _attack("""
        try:
            blob = bytearray(4 * 2**30)
            report(allocated=True)
        except MemoryError:
            report(allocated=False)
    """)
    assert got == {"allocated": False}


def test_an_output_flood_is_neither_kept_nor_waited_for():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    r = sandbox.run_python("import sys\nchunk = 'x' * 2**20\nfor _ in range(400):\n"
                           "    sys.stdout.write(chunk)\n    sys.stderr.write(chunk)\n", LIMITS)
    took = time.monotonic() - t0
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert r.returncode != 0, "400 MiB of stderr must exceed the file-size limit"
    assert len(r.stderr_tail) <= sandbox.TAIL_BYTES and took < LIMITS.timeout_s + 2
    assert grew_kb < 100 * 1024, f"the checker's memory grew by {grew_kb} KiB"


def test_a_grandchild_does_not_outlive_the_check():
    marker = f"selfevolve-grandchild-{uuid.uuid4().hex}"
    r = sandbox.run_python(textwrap.dedent(f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(30)", {marker!r}])
            os._exit(0)
        os.wait()
        import time
        time.sleep(0.3)  # the grandchild is running now
    """), LIMITS)
    assert r.returncode == 0, r.stderr_tail
    assert _processes_with(marker) == []


def test_an_endless_loop_is_killed_at_the_timeout_with_all_it_started():
    marker = f"selfevolve-loop-{uuid.uuid4().hex}"
    limits = sandbox.Limits(timeout_s=1.5)
    t0 = time.monotonic()
    r = sandbox.run_python(textwrap.dedent(f"""
        import os
        if os.fork() == 0:
            os.setsid()
        os.execv("/usr/bin/python3", ["python3", "-c", "while True: pass", {marker!r}])
    """), limits)
    took = time.monotonic() - t0
    assert r.timed_out and 1.4 < took < 4, (r, took)
    assert _processes_with(marker) == []
    c = checkers.run_code("```python\nwhile True:\n    pass\n```", limits)
    assert (c.ran, c.error) == (False, "timeout")


def test_a_real_answer_is_still_checked():
    good = "```python\nimport math, re, collections\ndef f(x):\n    return math.isqrt(x)\nassert f(17) == 4\n```"
    bad = good.replace("== 4", "== 5")
    assert checkers.run_code(good, LIMITS).passed_own_tests
    c = checkers.run_code(bad, LIMITS)
    assert not c.ran and c.error == "AssertionError"


@pytest.mark.parametrize("broken", ["missing", "refuses"])
def test_no_sandbox_means_the_code_does_not_run(monkeypatch, tmp_path, broken):
    """Fail closed: a missing bwrap, or one that cannot make its namespaces, runs nothing unconfined."""
    ran = tmp_path / "ran"
    if broken == "missing":
        monkeypatch.setattr(sandbox, "TOOL", str(tmp_path / "no-such-bwrap"))
    else:
        fake = tmp_path / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\n"
                        "exit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(sandbox, "TOOL", str(fake))
    code = f"open({str(ran)!r}, 'w').write('ran')\nassert True\n"
    with pytest.raises(SandboxError, match="bwrap"):
        sandbox.run_python(code, LIMITS)
    c = checkers.run_code(f"```python\n{code}```", LIMITS)
    assert c.error.startswith("sandbox unavailable") and not c.ran and not c.passed_own_tests
    assert not ran.exists()


def test_without_the_system_python_only_the_running_interpreter_s_prefix_is_bound(monkeypatch):
    """Where /usr/bin/python3 is missing, the venv's real interpreter runs, and of its parents (/root...)
    nothing but the path down to it is visible."""
    monkeypatch.setattr(sandbox, "PYTHON", "/nonexistent/python3")
    got = _attack("""
        chain, path = {}, sys.prefix
        while path != "/":
            parent = os.path.dirname(path)
            chain[parent] = os.listdir(parent)
            path = parent
        report(prefix=sys.prefix, chain=chain, uid=os.getuid())
    """)
    assert got["uid"] in sandbox.UIDS
    for parent, names in got["chain"].items():
        if parent not in ("/", "/usr"):
            assert len(names) == 1 and got["prefix"].startswith(os.path.join(parent, names[0])), got


def _load(name: str, path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_scorer_runs_and_scores_only_responses_to_its_own_calls(tmp_path, monkeypatch):
    """Forged responses to a real code question (a model never called, another call's or tenant's request
    id, a query with no decision) are dead-lettered and their code never reaches the sandbox; the real
    responses still get the query answered once."""
    import asyncio

    from selfevolve.config import Settings

    agents = _load("_agents_conftest", "agents/conftest.py")
    scorer_tests = _load("_scorer_agent_tests", "agents/test_scorer_agent.py")
    ran: list[str] = []
    real_run = sandbox.run_python
    monkeypatch.setattr(sandbox, "run_python", lambda code, limits=LIMITS: ran.append(code) or real_run(code, limits))
    h = agents.Harness(Settings(topic_prefix="agents.", home=tmp_path), ())
    evil = "```python\nopen('/tmp/forged', 'w').write('x')\nassert True\n```"
    good = f"```python\ndef add(a, b):  # {uuid.uuid4().hex}\n    return a + b\nassert add(1, 2) == 3\n```"

    async def run():
        feed = scorer_tests.Feed(h)
        _, rec = scorer_tests._decision(h, "c-1", scorer_tests.CODE_Q)
        await feed.put(("route_decision", rec))
        reqs = h.of_kind("inference_request")
        called = {r["model"] for r in reqs}
        stranger = next(m.name for m in h.rt.serving().catalogue.models if m.name not in called)
        forged = [
            {**scorer_tests._response(reqs[0], evil), "model": stranger},
            {**scorer_tests._response(reqs[0], evil), "request_id": reqs[-1]["request_id"] + "x"},
            {**scorer_tests._response(reqs[0], evil), "request_id": "other/" + reqs[0]["request_id"]},
            {**scorer_tests._response(reqs[0], evil), "query_id": "never-decided"},
        ]
        await feed.put(*[("inference_response", f) for f in forged])
        await feed.put(*[("inference_response", scorer_tests._response(r, good)) for r in reqs])
        return len(forged)

    n_forged = asyncio.run(run())
    assert not any("forged" in code for code in ran), "a forged response's code was run"
    assert any("add(1, 2)" in code for code in ran), "the real answers' code must still be checked"
    assert len(h.of_kind("dead_letter")) == n_forged
    assert [a["query_id"] for a in h.of_kind("answer")] == ["c-1"]
