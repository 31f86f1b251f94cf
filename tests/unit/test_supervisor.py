"""The supervisor: its backoff schedule, and a real supervisor process restarting a dummy worker that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.config import Settings
from streams.stack import Stack
from streams.supervisor import STATE_FILE, backoff, read_state

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("failures", "delay"), [
    (0, 0.0), (-3, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0), (10**6, 60.0)])
def test_backoff_doubles_from_one_second_to_a_minute(failures, delay):
    assert backoff(failures) == delay


@given(failures=st.integers(1, 10**9), base=st.floats(0.01, 10), cap=st.floats(10, 1000))
def test_backoff_is_monotonic_bounded_and_doubles_below_the_cap(failures, base, cap):
    now, after = backoff(failures, base, cap), backoff(failures + 1, base, cap)
    assert base <= now <= cap and now <= after <= cap
    assert after == min(cap, 2 * now) or now == cap


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(home=tmp_path, supervisor_backoff_s=0.2, supervisor_backoff_max_s=0.8,
                    supervisor_stable_s=30.0, **kw)


def _wait(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _start_supervisor(stack: Stack, settings: Settings, services: dict[str, list[str]]) -> subprocess.Popen:
    stack.pids.mkdir(parents=True, exist_ok=True)
    stack.logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "streams.supervisor"]
    for name, cmd in services.items():
        argv += ["--service", f"{name}={json.dumps(cmd)}"]
    from streams.stack import Service

    return stack.spawn(Service("supervisor", tuple(argv)))


def test_a_dying_worker_is_restarted_with_backoff_and_down_leaves_no_process(tmp_path):
    settings = _settings(tmp_path)
    stack = Stack(settings)
    crasher = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    sup = _start_supervisor(stack, settings, {"crasher": crasher, "sleeper": sleeper})
    try:
        # Each restart waits longer: 0.2, 0.4, then the 0.8 s cap, between the exit and the next start.
        for n, delay in ((1, 0.2), (2, 0.4), (3, 0.8)):
            crash = _wait(lambda: (w := (read_state(settings).get("workers") or {}).get("crasher"))
                          and w["restarts"] == n and w, 30, f"restart {n} of the crasher")
            assert crash["last_exit"] == 3 and crash["failures"] == n
            assert delay <= crash["started_at"] - crash["last_exit_at"] < delay + 0.4, (n, crash)
        state = read_state(settings)
        sleeping = state["workers"]["sleeper"]
        assert sleeping["restarts"] == 0 and _alive(sleeping["pid"]) and stack.pid("sleeper") == sleeping["pid"]
        # `selfevolve status` shows the restarts.
        out = subprocess.run([sys.executable, "-m", "streams.cli", "status"], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, **settings.to_env()}, timeout=60)
        line = next(x for x in out.stdout.splitlines() if x.startswith("crasher"))
        assert "restarts=" in line and "last_exit=3" in line, out.stdout + out.stderr

        # A worker killed from outside (a crash, not Stack.kill) comes back with a new pid.
        os.kill(sleeping["pid"], signal.SIGKILL)
        again = _wait(lambda: (w := read_state(settings)["workers"]["sleeper"])["restarts"] == 1
                      and w["pid"] and w, 10, "the sleeper's restart")
        assert again["last_exit"] == -signal.SIGKILL and again["pid"] != sleeping["pid"] and _alive(again["pid"])

        # Stopped on purpose: it stays down until the next `up` releases it.
        stack.kill("sleeper", timeout=5)
        time.sleep(1.5)
        held = read_state(settings)["workers"]["sleeper"]
        assert held["held"] and held["pid"] is None and stack.pid("sleeper") is None

        pids = [p for p in (again["pid"], read_state(settings)["workers"]["crasher"]["pid"]) if p]
        stack.down(with_broker=False)
        assert sup.wait(timeout=30) == 0
        assert not any(_alive(p) for p in pids + [sup.pid])
        assert not list(stack.pids.glob("*.pid"))
        assert read_state(settings)["stopping"] is True
    finally:
        if sup.poll() is None:
            sup.kill()


def test_status_without_a_supervisor_state_is_empty(tmp_path):
    assert Stack(_settings(tmp_path)).restarts() == {}
    (tmp_path / STATE_FILE).write_text("{half")
    assert read_state(_settings(tmp_path)) == {}


def test_a_new_supervisor_stops_workers_a_killed_one_left_behind(tmp_path):
    settings = _settings(tmp_path)
    stack = Stack(settings)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    first = _start_supervisor(stack, settings, {"sleeper": sleeper})
    second = None
    try:
        orphan = _wait(lambda: (read_state(settings).get("workers") or {}).get("sleeper", {}).get("pid"), 20,
                       "the first sleeper")
        os.killpg(first.pid, signal.SIGKILL)  # the supervisor dies hard: its worker lives on
        first.wait(timeout=10)
        assert _alive(orphan)
        second = _start_supervisor(stack, settings, {"sleeper": sleeper})
        fresh = _wait(lambda: (p := read_state(settings)["workers"]["sleeper"]["pid"]) != orphan and p, 30,
                      "a sleeper of the second supervisor")
        _wait(lambda: not _alive(orphan), 10, "the orphan to be stopped")
        assert _alive(fresh)
        stack.down(with_broker=False)
        assert second.wait(timeout=30) == 0 and not _alive(fresh)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
