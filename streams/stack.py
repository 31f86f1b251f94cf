"""Start, stop and report the local stack: Kafka broker, the two stream workers, model workers."""

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
from selfevolve.errors import SelfEvolveError


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]


def broker_for(settings: Settings) -> KafkaBroker:
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    return KafkaBroker(cache_dir=settings.cache_dir / "kafka", data_dir=settings.home / "kafka",
                       port=int(port), controller_port=int(port) + 1)


def services(settings: Settings, model_workers: int = 1, backends: str = "replay",
             live: bool = False) -> list[Service]:
    py = sys.executable
    out = [Service("streams", (py, "-m", "streams.app", "--role", "serve", "worker", "--loglevel", "info")),
           Service("history", (py, "-m", "streams.app", "--role", "history", "worker", "--loglevel", "info"))]
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
           live: bool = False) -> None:
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if with_broker:
            broker = broker_for(self.settings)
            if not broker.is_running():
                broker.start()
        # Topics first: auto-created ones get one partition, and Faust needs them co-partitioned.
        import asyncio

        from streams.kafka_io import ensure_topics

        asyncio.run(ensure_topics(self.settings))
        for svc in services(self.settings, model_workers, backends, live):
            self.start(svc)

    def start(self, svc: Service) -> int:
        if self.pid(svc.name):
            return self.pid(svc.name)
        env = {**os.environ, **self.settings.to_env(), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        root = Path(__file__).resolve().parent.parent
        log = open(self.logs / f"{svc.name}.log", "ab")
        proc = subprocess.Popen(svc.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
        (self.pids / f"{svc.name}.pid").write_text(str(proc.pid))
        return proc.pid

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


def require_running(stack: Stack) -> None:
    if not broker_for(stack.settings).is_running():
        raise SelfEvolveError("the stack is not running: start it with `selfevolve up`")
