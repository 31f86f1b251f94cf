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
        assert s.kafka_security == "sasl" and s.kafka_username in ("admin", "serve", "history", "model", "gateway")


def _all_values(node) -> list[str]:
    if isinstance(node, dict):
        return [v for x in node.values() for v in _all_values(x)]
    if isinstance(node, list):
        return [v for x in node for v in _all_values(x)]
    return [str(node)]


def _env_items(node) -> list[tuple[str, str]]:
    """Every KEY: value pair under any `environment` (and the x- anchors) of the file."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, (dict, list)):
                out += _env_items(v)
            else:
                out.append((str(k), str(v)))
    elif isinstance(node, list):
        for x in node:
            out += _env_items(x)
    return out


def test_no_credential_is_written_in_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    for key, value in _env_items(COMPOSE):
        if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|JAAS", key) and "SECRETS_DIR" not in key:
            # Only a reference to a host variable that must be set: ${NAME:?message}, never a literal.
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value) or key.endswith("JAAS_CONFIG"), (key, value)
        if 'password="' in value:
            assert not re.search(r'password="(?!\$\{[A-Z_]+:\?)', value), (key, value)
            assert not re.search(r'user_admin="(?!\$\{[A-Z_]+:\?)', value), (key, value)
    # No URL with user:password@ and no password-looking literal anywhere.
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    assert "selfevolve@" not in text and "PASSWORD: selfevolve" not in text


def test_workers_get_secrets_as_files_not_environment_variables():
    secrets = COMPOSE["secrets"]
    for name, svc in OURS.items():
        env = _env(svc)
        assert not {k for k in env if re.search(r"PASSWORD|API_KEY|TOKEN", k)}, name
        if name != "kafka-setup":
            assert env["SELFEVOLVE_SECRETS_DIR"] == "/run/secrets"
            targets = {s["target"] for s in svc["secrets"]}
            assert "selfevolve_kafka_password" in targets, name
        for s in svc.get("secrets", []):
            assert set(secrets[s["source"]]) == {"environment"}, s  # from the host's environment only
    # Each role sees its own Kafka password only; only the model worker gets the OpenAI key.
    sources = {name: {s["source"] for s in svc.get("secrets", [])} for name, svc in OURS.items()}
    assert sources["serve"] == {"kafka_serve_password"}
    assert sources["model-worker"] == {"kafka_model_password", "openai_api_key"}
    assert "openai_api_key" not in sources["history"] | sources["serve"]


def test_the_broker_enforces_acls_on_authenticated_listeners():
    env = _env(COMPOSE["services"]["kafka"])
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false" and env["KAFKA_SUPER_USERS"] == "User:admin"
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) <= {"SASL_PLAINTEXT", "SASL_SSL"}


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
    assert serve & history == {"streams.model_events", "streams.metrics"}  # metrics: each process serves its own
    # The answer path holds the routing history in memory; the sink holds the chdb directory.
    assert {"streams.router", "streams.scorer", "streams.feedback"} <= serve
    assert {"streams.sink", "streams.evolution_agent"} <= history


def _volume_targets(svc: dict) -> list[tuple[str | None, str]]:
    """(source, container path) of each volume; source None for an anonymous volume (one per container)."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append((v.get("source"), v["target"]))
        else:
            parts = str(v).split(":")
            out.append((None, parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return out


def test_the_serve_service_scales_out():
    """`docker compose up --scale serve=N`: replicas need distinct container names (so none is fixed), no host
    port (N containers cannot bind one), and a home of their own (their history snapshots must not collide)."""
    serve = COMPOSE["services"]["serve"]
    assert "container_name" not in serve and "ports" not in serve and "hostname" not in serve
    assert serve.get("network_mode") != "host"  # all replicas would listen on one /ready port
    assert int(serve.get("deploy", {}).get("replicas", 1)) >= 1
    assert "--scale serve=" in (ROOT / "docker-compose.yml").read_text()  # documented where it is used
    home = _env(serve)["SELFEVOLVE_HOME"]
    sources = [src for src, target in _volume_targets(serve) if target == home or home.startswith(target + "/")]
    assert sources == [None], "each replica's home must be its own (anonymous) volume, not a shared one"
    assert "SELFEVOLVE_SERVE_WORKER" not in _env(serve)  # same index in every replica: fine on its own volume
    assert _roles([list(serve["entrypoint"]) + list(serve["command"])]) == ["serve"]


def test_the_history_service_is_never_scaled():
    """One sink (and one statistics and meta-learner fold): a container_name makes compose refuse to scale it."""
    for name, svc in OURS.items():
        if _roles([list(svc["entrypoint"]) + list(svc.get("command", []))]) == ["history"]:
            assert svc.get("container_name") and int(svc.get("deploy", {}).get("replicas", 1)) == 1, name
            assert "ports" not in svc
    shared = {src for svc in OURS.values() for src, _ in _volume_targets(svc) if src}
    assert all(src in COMPOSE["volumes"] for src in shared)
    uses = [n for n, svc in OURS.items() for src, _ in _volume_targets(svc) if src == "selfevolve-home"]
    assert uses == ["history"], uses  # a named home volume is one writer's
