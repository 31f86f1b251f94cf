"""`selfevolve up --serve-workers N`: the services the supervisor runs, and how it restarts and probes each one."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from streams.cli import build_parser
from streams.stack import Service, child_env, role_of, serve_name, serve_ports, services, wait_ready
from streams.supervisor import Supervisor, supervisor_service


def _settings(tmp_path: Path, **kw) -> Settings:
    base = dict(home=tmp_path, web_port=20100, history_web_port=20090, sql_port=20091,
                supervisor_backoff_s=1.0, supervisor_backoff_max_s=8.0, supervisor_stable_s=60.0)
    return Settings(**{**base, **kw})


def test_n_serve_workers_each_get_their_index_and_port(tmp_path):
    svcs = services(_settings(tmp_path), model_workers=2, serve_workers=3)
    serve = [s for s in svcs if role_of(s.name) == "serve"]
    assert [s.name for s in serve] == ["streams", "streams-1", "streams-2"]
    assert [dict(s.env) for s in serve] == [{"SELFEVOLVE_SERVE_WORKER": str(i)} for i in range(3)]
    assert [s.ready_port for s in serve] == [20100, 20101, 20102]
    assert all(s.argv[s.argv.index("--role") + 1] == "serve" for s in serve)
    names = [s.name for s in svcs]
    assert names.count("history") == 1 and {"model-worker-0", "model-worker-1"} <= set(names)
    assert next(s for s in svcs if s.name == "history").ready_port == 20090


def test_the_default_is_settings_serve_workers_and_the_one_worker_stack_is_unchanged(tmp_path):
    assert [s.name for s in services(_settings(tmp_path, serve_workers=2)) if role_of(s.name) == "serve"] == [
        "streams", "streams-1"]
    one = services(_settings(tmp_path))
    assert [s.name for s in one][:2] == ["streams", "history"] and serve_name(0) == "streams"


def test_serve_ports_that_would_take_another_port_of_the_stack_are_refused(tmp_path):
    clash = _settings(tmp_path, web_port=20100, history_web_port=20102)
    assert serve_ports(clash, 2) == [20100, 20101]
    with pytest.raises(ConfigError, match="history_web_port 20102"):
        serve_ports(clash, 3)
    with pytest.raises(ConfigError, match="sql_port"):
        services(_settings(tmp_path, sql_port=20101), serve_workers=2)
    with pytest.raises(ConfigError):
        services(_settings(tmp_path), serve_workers=0)


def test_each_serve_worker_runs_as_the_serve_principal_with_its_own_index(tmp_path):
    settings = _settings(tmp_path)
    assert {role_of(serve_name(i)) for i in range(5)} == {"serve"} and role_of("history") == "history"
    env = child_env(settings, role_of("streams-2"))
    env.update(dict(services(settings, serve_workers=3)[2].env))
    assert env["SELFEVOLVE_SERVE_WORKER"] == "2" and env["SELFEVOLVE_SECRETS_DIR"].endswith("secrets/serve")


def test_up_and_the_supervisor_carry_the_count():
    args = build_parser().parse_args(["up", "--serve-workers", "3"])
    assert args.serve_workers == 3 and build_parser().parse_args(["up"]).serve_workers is None
    argv = supervisor_service(1, "replay", False, 3).argv
    assert argv[argv.index("--serve-workers") + 1] == "3"
    assert "--serve-workers" not in supervisor_service(1, "replay", False).argv


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid, self.code = pid, None

    def poll(self):
        return self.code


class _Fake:
    """A spawn that records starts, and a /ready probe that answers from a set of ready ports."""

    def __init__(self) -> None:
        self.started: list[tuple[str, dict]] = []
        self.procs: dict[str, _Proc] = {}
        self.ready: set[int] = set()

    def spawn(self, svc: Service) -> _Proc:
        self.started.append((svc.name, dict(svc.env)))
        self.procs[svc.name] = _Proc(1000 + len(self.started))
        return self.procs[svc.name]

    def probe(self, port: int) -> bool:
        return port in self.ready


def _supervisor(tmp_path: Path, n: int) -> tuple[Supervisor, _Fake]:
    settings = _settings(tmp_path)
    fake = _Fake()
    (tmp_path / "pids").mkdir(exist_ok=True)
    todo = [s for s in services(settings, serve_workers=n) if role_of(s.name) == "serve"]
    return Supervisor(settings, todo, fake.spawn, tmp_path / "pids", probe=fake.probe), fake


def test_serve_workers_restart_independently_with_their_own_backoff(tmp_path):
    sup, fake = _supervisor(tmp_path, 3)
    sup.step(0.0)
    assert [(n, e["SELFEVOLVE_SERVE_WORKER"]) for n, e in fake.started] == [
        ("streams", "0"), ("streams-1", "1"), ("streams-2", "2")]
    fake.procs["streams-1"].code = -9  # SIGKILLed at t=5: back in 1 s, then 2 s; its peers run on
    sup.step(5.0)
    w = sup.workers["streams-1"]
    assert w.last_exit == -9 and w.pid is None and w.next_start_at == 6.0
    sup.step(5.5)
    assert len(fake.started) == 3
    sup.step(6.0)
    assert fake.started[-1] == ("streams-1", {"SELFEVOLVE_SERVE_WORKER": "1"}) and w.restarts == 1
    fake.procs["streams-1"].code = 1
    sup.step(7.0)
    assert w.failures == 2 and w.next_start_at == 9.0
    for name in ("streams", "streams-2"):
        assert sup.workers[name].restarts == 0 and sup.workers[name].failures == 0
        assert sup.procs[name].poll() is None


def test_readiness_is_probed_per_worker_and_reset_by_a_restart(tmp_path):
    sup, fake = _supervisor(tmp_path, 2)
    sup.step(0.0)
    assert [sup.workers[n].ready for n in ("streams", "streams-1")] == [False, False]
    fake.ready = {20100}
    assert sup.step(0.5) is False  # probes are spaced READY_PROBE_S apart
    assert sup.step(1.0) is True
    a, b = sup.workers["streams"], sup.workers["streams-1"]
    assert (a.ready, a.ready_at, b.ready, b.ready_at) == (True, 1.0, False, None)
    fake.ready.add(20101)
    sup.step(2.0)
    assert b.ready and b.ready_at == 2.0
    fake.procs["streams"].code = -9
    sup.step(3.0)
    assert a.ready is None and a.ready_at is None
    sup.step(4.0)  # restarted after the 1 s backoff: not ready until a probe says so
    assert a.pid is not None and a.ready is False
    sup.step(5.0)
    assert a.ready and a.ready_at == 5.0


def test_wait_ready_waits_for_every_serve_worker_and_history(tmp_path):
    settings = _settings(tmp_path, serve_workers=3)
    asked: list[int] = []

    def probe(port: int) -> bool:
        asked.append(port)
        return True

    wait_ready(settings, probe=probe, timeout=1)
    assert sorted(asked) == [20090, 20100, 20101, 20102]
    from selfevolve.errors import SelfEvolveError

    with pytest.raises(SelfEvolveError, match="streams-1"):
        wait_ready(settings, probe=lambda port: port != 20101, timeout=0.2)


def test_status_shows_each_serve_workers_port_and_readiness(tmp_path, capsys):
    import json

    from streams.cli import _status
    from streams.supervisor import STATE_FILE, Worker

    settings = _settings(tmp_path)
    workers = {"streams": Worker("streams", port=20100, ready=True, restarts=1),
               "streams-1": Worker("streams-1", port=20101, ready=False), "model-worker-0": Worker("model-worker-0")}
    from dataclasses import asdict

    (tmp_path / STATE_FILE).write_text(json.dumps({"workers": {n: asdict(w) for n, w in workers.items()}}))
    _status(None, settings)
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "port=20100 ready" in lines["streams"] and "restarts=1" in lines["streams"]
    assert "port=20101 not ready" in lines["streams-1"] and "port=" not in lines["model-worker-0"]
