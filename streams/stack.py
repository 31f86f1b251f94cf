"""Start, stop and report the local stack: Kafka broker, N serve workers, the history worker, model workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.kafka.launcher import KafkaBroker
from selfevolve.config import Settings
from selfevolve.errors import ConfigError, SelfEvolveError

SERVE = "streams"  # serve worker 0's service name (kept from the one-worker stack); worker i > 0: streams-<i>


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # set in its environment on top of child_env (e.g. its serve index)
    ready_port: int | None = None  # serves /ready on 127.0.0.1 at this port: the supervisor records when it is


def serve_name(index: int) -> str:
    return SERVE if index == 0 else f"{SERVE}-{index}"


def serve_ports(settings: Settings, workers: int) -> list[int]:
    """The /ready ports of serve workers 0..workers-1 (each worker listens on web_port + its index); a
    ConfigError when one is another port of the stack (history_web_port, sql_port, gateway_port)."""
    ports = [settings.web_port + i for i in range(workers)]
    taken = {settings.history_web_port: "history_web_port", settings.sql_port: "sql_port",
             settings.gateway_port: "gateway_port"}
    for port in ports:
        if port in taken:
            raise ConfigError(f"{workers} serve workers listen on ports {ports[0]}..{ports[-1]} (web_port + index),"
                              f" which takes {taken[port]} {port}: move web_port or {taken[port]}")
    return ports


def broker_for(settings: Settings) -> KafkaBroker:
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    return KafkaBroker(cache_dir=settings.cache_dir / "kafka", data_dir=settings.home / "kafka",
                       port=int(port), controller_port=int(port) + 1, security=settings.kafka_security)


# Secrets each role's processes get (from the parent's settings) in their own secrets folder, besides their
# Kafka principal: only model workers call OpenAI; only the history role writes ClickHouse and serves SQL.
ROLE_SECRETS = {"serve": (), "history": ("clickhouse_password", "sql_token"), "model": ("openai_api_key",),
                "gateway": ()}  # the gateway reads its API keys from <home>/secrets/gateway_keys.json


def role_of(service: str) -> str | None:
    """The Kafka principal (role) a service runs as; None for one that talks to no broker (the supervisor)."""
    if service == SERVE or service.startswith(f"{SERVE}-"):
        return "serve"
    if service == "history":
        return "history"
    if service.startswith(("model-worker", "local-worker", "trainer")):
        return "model"
    if service == "gateway":
        return "gateway"
    return None


def secrets_dir_of(settings: Settings, role: str) -> Path:
    return settings.home / "secrets" / role


def _secret_fields() -> set[str]:
    from pydantic import SecretStr

    return {n for n, f in Settings.model_fields.items() if f.annotation is SecretStr or SecretStr in
            getattr(f.annotation, "__args__", ())} | {"kafka_username", "secrets_dir"}


def child_env(settings: Settings, role: str | None) -> dict[str, str]:
    """The environment of a child process of the stack: the parent's, with every secret (and the parent's own
    principal) removed, these settings, and SELFEVOLVE_SECRETS_DIR naming the role's secrets folder, from
    which the child's Settings.load() reads its credentials. No secret value is ever in it."""
    drop = {f"SELFEVOLVE_{name.upper()}" for name in _secret_fields()}
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    env.update(settings.to_env())
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    if role is not None:
        env["SELFEVOLVE_SECRETS_DIR"] = str(secrets_dir_of(settings, role))
    return env


def operator_settings(settings: Settings) -> Settings:
    """What the operator's own commands (produce, replay, demo, ...) connect with: when the local broker runs
    secured and these settings name no principal, its super user, whose password the broker keeps (0600)."""
    from pydantic import SecretStr

    from infra.kafka.security import ADMIN_USER

    mode_file = settings.home / "kafka" / "security-mode"
    mode = settings.kafka_security
    if mode == "none" and mode_file.exists():  # the local stack was started secured: follow it
        mode = mode_file.read_text().strip()
    if mode == "none" or settings.kafka_username:
        return settings.model_copy(update={"kafka_security": mode})
    broker = broker_for(settings.model_copy(update={"kafka_security": mode}))
    update: dict = {"kafka_security": mode, "kafka_ca_file": settings.kafka_ca_file or broker.ca_file}
    if broker.admin_password_file.exists():
        update.update(kafka_username=ADMIN_USER, kafka_password=SecretStr(broker.admin_password()))
    return settings.model_copy(update=update)


def provision_roles(admin: Settings, settings: Settings) -> None:
    """Write each role's secrets folder (0700, files 0600): its Kafka principal, provisioned on the broker
    with its ACLs (passwords made once and kept), and the secrets of ROLE_SECRETS the parent holds."""
    from pydantic import SecretStr

    from infra.kafka.security import provision, secret_file, write_secrets

    root = settings.home / "secrets"  # its owner alone may list what it holds
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    kept = {}
    for role in ROLE_SECRETS:
        f = secret_file(secrets_dir_of(settings, role), "kafka_password")
        if f.exists():
            kept[role] = SecretStr(f.read_text().strip())
    passwords = provision(admin, tuple(ROLE_SECRETS), kept) if admin.kafka_security != "none" else {}
    for role, fields in ROLE_SECRETS.items():
        values = {f: getattr(settings, f) for f in fields if getattr(settings, f, None) is not None}
        if role in passwords:
            values.update(kafka_username=role, kafka_password=passwords[role])
        write_secrets(secrets_dir_of(settings, role), values)


def services(settings: Settings, model_workers: int = 1, backends: str = "replay",
             live: bool = False, serve_workers: int | None = None) -> list[Service]:
    """What the supervisor runs: serve_workers (default settings.serve_workers) serve processes in one
    consumer group, each told its index (SELFEVOLVE_SERVE_WORKER: its snapshot folder and web port), the
    history worker, model workers and, live, the distillation trainer and a local-model worker."""
    py = sys.executable
    n = settings.serve_workers if serve_workers is None else serve_workers
    if n < 1:
        raise ConfigError(f"serve_workers must be at least 1, not {n}")
    serve = (py, "-m", "streams.app", "--role", "serve", "worker", "--loglevel", "info")
    out = [Service(serve_name(i), serve, (("SELFEVOLVE_SERVE_WORKER", str(i)),), port)
           for i, port in enumerate(serve_ports(settings, n))]
    out += [Service("history", (py, "-m", "streams.app", "--role", "history", "worker", "--loglevel", "info"),
                    ready_port=settings.history_web_port)]
    # The OpenAI-compatible edge (streams/gateway.py), as its own Kafka principal.
    out += [Service("gateway", (py, "-m", "streams.cli", "gateway"), ready_port=settings.gateway_port)]
    out += [Service(f"model-worker-{i}", (py, "-m", "workers.model_worker", "--backends", backends,
                                          "--worker-id", str(i))) for i in range(model_workers)]
    if live:  # distillation: a trainer, and a worker that serves (and hot-loads) the local students
        out += [Service("trainer", (py, "-m", "workers.trainer", "--steps", str(settings.distill_steps))),
                Service("local-worker", (py, "-m", "workers.model_worker", "--backends", "local",
                                         "--worker-id", "local-0"))]
    return out


class Stack:
    """Processes of one local stack, tracked by pid files under settings.home/pids."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pids = settings.home / "pids"
        self.logs = settings.home / "logs"

    def up(self, model_workers: int = 1, backends: str = "replay", with_broker: bool = True,
           live: bool = False, serve_workers: int | None = None) -> None:
        serve_workers = self.settings.serve_workers if serve_workers is None else serve_workers
        serve_ports(self.settings, serve_workers)  # a port clash fails here, before anything starts
        self.settings = self.settings.model_copy(update={"serve_workers": serve_workers})
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        # A local broker formatted secured stays secured: its workers follow its mode.
        mode = operator_settings(self.settings).kafka_security
        self.settings = self.settings.model_copy(update={"kafka_security": mode})
        if with_broker:
            broker = broker_for(self.settings)
            if not broker.is_running():
                broker.start()
            if broker.ca_file and not self.settings.kafka_ca_file:  # children trust the broker's own CA
                self.settings = self.settings.model_copy(update={"kafka_ca_file": broker.ca_file})
        # Topics first: auto-created ones get one partition, and Faust needs them co-partitioned.
        import asyncio

        from streams.kafka_io import ensure_topics

        admin = operator_settings(self.settings)
        asyncio.run(ensure_topics(admin))
        provision_roles(admin, self.settings)  # before any worker starts: each reads its own folder
        # The supervisor starts the workers and restarts one that dies (streams/supervisor.py); workers
        # stopped on purpose with kill() wait for this call.
        from streams.supervisor import release_held, supervisor_service

        release_held(self.pids)
        self.start(supervisor_service(model_workers, backends, live, serve_workers))

    def start(self, svc: Service) -> int:
        if self.pid(svc.name):
            return self.pid(svc.name)
        return self.spawn(svc).pid

    def spawn(self, svc: Service) -> subprocess.Popen:
        """Start one service detached (its own session), logging to logs/<name>.log, with a pid file."""
        env = child_env(self.settings, role_of(svc.name))  # its own credentials only, never in env
        env.update(dict(svc.env))
        root = Path(__file__).resolve().parent.parent
        log = open(self.logs / f"{svc.name}.log", "ab")
        proc = subprocess.Popen(svc.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
        log.close()  # the child has its own copy; the supervisor spawns many over its life
        (self.pids / f"{svc.name}.pid").write_text(str(proc.pid))
        return proc

    def pid(self, name: str) -> int | None:
        f = self.pids / f"{name}.pid"
        if not f.exists():
            return None
        pid = int(f.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A zombie child still answers kill(0); treat it as gone.
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return None
        except (FileNotFoundError, IndexError):
            return None
        return pid

    def kill(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        from streams.supervisor import hold

        hold(self.pids, name)  # stopped on purpose: the supervisor leaves it down until the next up()
        pid = self.pid(name)
        if pid is None:
            return
        os.killpg(pid, sig)
        deadline = time.time() + timeout
        while self.pid(name) and time.time() < deadline:
            time.sleep(0.1)
        if self.pid(name):
            os.killpg(pid, signal.SIGKILL)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def down(self, with_broker: bool = True) -> None:
        from streams.supervisor import STOP_TIMEOUT_S

        self.kill("supervisor", timeout=STOP_TIMEOUT_S + 10)  # first: it stops its workers, restarting none
        for f in sorted(self.pids.glob("*.pid")) if self.pids.exists() else []:
            self.kill(f.stem)
        if with_broker:
            broker_for(self.settings).stop()

    def status(self) -> list[tuple[str, int | None, str]]:
        rows = []
        broker = broker_for(self.settings)
        rows.append(("kafka", None if not broker.is_running() else -1, self.settings.kafka_bootstrap))
        names = {f.stem for f in self.pids.glob("*.pid")} if self.pids.exists() else set()
        for name in sorted(names):
            rows.append((name, self.pid(name), str(self.logs / f"{name}.log")))
        return rows

    def restarts(self) -> dict[str, dict]:
        """Per worker, what the supervisor recorded: restarts, last exit code and when, next start, held."""
        from streams.supervisor import read_state

        return read_state(self.settings).get("workers", {})


def wait_ready(settings: Settings, serve_workers: int | None = None, timeout: float = 180.0,
               probe=None) -> None:
    """Block until every serve worker (web_port + index) and the history worker answer /ready."""
    from streams.supervisor import http_ready

    probe = probe or http_ready
    n = settings.serve_workers if serve_workers is None else serve_workers
    waiting = {serve_name(i): port for i, port in enumerate(serve_ports(settings, n))}
    waiting["history"] = settings.history_web_port
    deadline = time.time() + timeout
    while True:
        waiting = {name: port for name, port in waiting.items() if not probe(port)}
        if not waiting:
            return
        if time.time() >= deadline:
            raise SelfEvolveError(f"stream worker(s) {', '.join(waiting)} not ready after {timeout:.0f}s; see "
                                  f"{settings.home / 'logs'}")
        time.sleep(0.5)


def require_running(stack: Stack) -> None:
    if not broker_for(stack.settings).is_running():
        raise SelfEvolveError("the stack is not running: start it with `selfevolve up`")
