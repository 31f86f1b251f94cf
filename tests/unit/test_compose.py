"""docker-compose.yml cannot run here (no Docker engine), so check statically what a run would trip over."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from selfevolve.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OURS = {name: svc for name, svc in COMPOSE["services"].items() if "build" in svc}


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    return {k: str(v) for k, v in env.items()}


def test_every_selfevolve_variable_is_a_setting_and_parses(monkeypatch):
    names = {f"SELFEVOLVE_{f.upper()}" for f in Settings.model_fields}
    for name, svc in OURS.items():
        env = _env(svc)
        unknown = {k for k in env if k.startswith("SELFEVOLVE_")} - names
        assert not unknown, f"{name}: {unknown} are not Settings fields (a typo is silently ignored)"
        for k, v in env.items():
            # ${VAR:-default} takes its default when the host leaves VAR unset.
            monkeypatch.setenv(k, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v))
        s = Settings()
        assert s.kafka_bootstrap == "kafka:9092" and s.clickhouse_url.startswith("http://")


@pytest.mark.parametrize("name", sorted(OURS))
def test_services_run_modules_that_exist_from_files_the_image_copies(name):
    svc = OURS[name]
    dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
    copied = re.findall(r"^COPY (\S+)", dockerfile.read_text(), re.M)
    for path in copied:
        assert (ROOT / path).exists(), f"{dockerfile.name} copies {path}, which is not in the repo"
    argv = svc["entrypoint"]
    assert argv[:2] == ["python", "-m"], argv
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module
    assert module.split(".")[0] in copied, f"{module} is not copied into the image"


def test_the_clickhouse_server_gets_the_one_ddl():
    mounts = COMPOSE["services"]["clickhouse"]["volumes"]
    assert any(m.startswith("./infra/clickhouse/ddl.sql:") for m in mounts)
    assert (ROOT / "infra" / "clickhouse" / "ddl.sql").is_file()


def test_compose_runs_the_kafka_version_the_tests_run():
    pom = (ROOT / "infra" / "kafka" / "pom.xml").read_text()
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{local}"


def _roles(argvs) -> list[str]:
    """The stream-worker roles a list of argv (entrypoint + command) runs, `serve` when none is named."""
    out = []
    for argv in argvs:
        if "streams.app" in argv:
            rest = argv[argv.index("streams.app") + 1:]
            out.append(rest[1] if rest[:1] == ["--role"] else "serve")
    return out


def test_compose_and_the_local_stack_run_every_stream_worker_role_once():
    from streams.app import ROLES
    from streams.stack import services

    compose = _roles([list(s["entrypoint"]) + list(s.get("command", [])) for s in OURS.values()])
    local = _roles([list(s.argv) for s in services(Settings())])
    assert sorted(compose) == sorted(ROLES) and sorted(local) == sorted(ROLES)


def test_each_agent_runs_in_one_role_and_only_the_evolution_followers_in_both():
    from streams.app import ROLES

    serve, history = set(ROLES["serve"]), set(ROLES["history"])
    assert serve & history == {"streams.model_events"}
    # The answer path holds the routing history in memory; the sink holds the chdb directory.
    assert {"streams.router", "streams.scorer", "streams.feedback"} <= serve
    assert {"streams.sink", "streams.stats", "streams.gaps", "streams.metalearner"} <= history
