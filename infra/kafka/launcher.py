"""Fetch, format, start and stop a one-node KRaft Kafka broker run from Maven Central jars."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from infra.kafka.credentials import ADMIN_USER, SCRAM_MECHANISM, make_tls, write_private
from infra.kafka.properties import (
    broker_properties, java_command, log4j2_properties, random_cluster_id, render_properties,
)
from selfevolve.config import DEFAULTS, Settings
from selfevolve.errors import BrokerError

DEFAULT_VERSION = "4.3.1"
POM = Path(__file__).resolve().with_name("pom.xml")
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
# Kafka security modes: "none" is today's PLAINTEXT (the demo); "sasl" is SASL/SCRAM with ACLs; "sasl_ssl" adds TLS.
SECURITY_MODES = ("none", "sasl", "sasl_ssl")


def bootstrap_port(settings: Settings) -> int:
    """The client port of settings.kafka_bootstrap."""
    return int(settings.kafka_bootstrap.rsplit(":", 1)[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


async def serves_metadata(bootstrap: str, timeout: float = 5.0, **client_options: Any) -> bool:
    """True once the broker answers a Metadata request that lists at least one broker; client_options
    (streams.kafka_io.security_options) authenticate the probe to a secured broker."""
    from aiokafka import AIOKafkaClient  # infra may use aiokafka; only selfevolve/ must not

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **client_options)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
        return False
    finally:
        await client.close()


def _run_coroutine(coro: Any) -> Any:
    """asyncio.run, also from code that already runs inside an event loop (async fixtures, agents)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _alive(pid: int) -> bool:
    """Whether pid is a live JVM running the Kafka main class (so a recycled pid is not mistaken for it)."""
    if not Path("/proc").is_dir():  # no procfs (macOS): any process with that pid counts
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        # A zombie has no memory map left, so its cmdline reads empty; the state letter is no help
        # because the JVM's first thread can show 'Z' while the others are still running.
        return MAIN_CLASS.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class KafkaBroker:
    """One KRaft broker+controller on 127.0.0.1 whose state lives in data_dir."""

    def __init__(
        self,
        cache_dir: Path,
        data_dir: Path,
        port: int = bootstrap_port(DEFAULTS),
        controller_port: int | None = None,
        version: str = DEFAULT_VERSION,
        heap: str = "512m",
        partitions: int = 1,
        security: str = "none",
    ) -> None:
        if security not in SECURITY_MODES:
            raise BrokerError(f"unknown Kafka security mode {security!r}; expected one of {', '.join(SECURITY_MODES)}")
        self.cache_dir = Path(cache_dir).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = port + 1 if controller_port is None else controller_port  # unless told: the next
        self.version = version
        self.heap = heap
        self.partitions = partitions
        self.libs_dir = self.cache_dir / f"kafka-{version}" / "libs"
        self.log_dir = self.data_dir / "kraft-logs"  # Kafka's log.dirs: topics, offsets, cluster id
        self.log_file = self.data_dir / "server.log"
        self.pid_file = self.data_dir / "kafka.pid"
        self.properties_file = self.data_dir / "server.properties"
        self.log4j_file = self.data_dir / "log4j2.properties"
        self.security = security
        # Secrets of a secured broker, readable by its owner only: the admin's password, the TLS files.
        self.secrets_dir = self.data_dir / "secrets"
        self.admin_password_file = self.secrets_dir / "admin-password"
        self.tls_dir = self.secrets_dir / "tls"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_settings(cls, settings: Settings, data_dir: Path | None = None, **kw: Any) -> KafkaBroker:
        """The local broker of these settings: jars under cache_dir, state under home (or data_dir), the port
        of kafka_bootstrap, kafka_security, topic_partitions for topics it creates itself."""
        kw.setdefault("partitions", settings.topic_partitions)
        return cls(settings.cache_dir / "kafka", data_dir or settings.home / "kafka", port=bootstrap_port(settings),
                   security=settings.kafka_security, **kw)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients trust for a sasl_ssl broker (made at first start)."""
        return self.tls_dir / "ca.pem" if self.security == "sasl_ssl" else None

    def admin_password(self) -> str | None:
        """The super user's password (made at first format), or None when security is off."""
        if self.security == "none":
            return None
        if not self.admin_password_file.exists():
            write_private(self.admin_password_file, secrets.token_urlsafe(32))
        return self.admin_password_file.read_text().strip()

    def admin_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments that connect as the super user ({} when security is off)."""
        from streams.kafka_io import security_options  # the one place that builds client security options

        return security_options(self.security, ADMIN_USER, self.admin_password(), self.ca_file)

    def _java(self, main: str, *args: str) -> list[str]:
        return java_command(self.libs_dir, self.heap, self.log4j_file, main, *args)

    def fetch(self) -> Path:
        """Copy the broker's jars from Maven Central into the cache unless they are there."""
        marker = self.libs_dir / f"kafka_2.13-{self.version}.jar"
        if marker.exists():
            return self.libs_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("mvn not found on PATH: install Maven (apt-get install maven) to fetch Kafka")
        self._need_java()
        # Per-process folder: two test sessions may fetch into the same cache at once.
        tmp = self.libs_dir.with_name(f"libs.partial.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
            f"-Dkafka.version={self.version}", f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (tmp / marker.name).exists():
            tail = (done.stdout + done.stderr)[-2000:]
            raise BrokerError(f"mvn could not fetch Kafka {self.version} (exit {done.returncode}):\n{tail}")
        # Rename at the end so a half-copied folder never passes for a complete one.
        if self.libs_dir.exists() and not marker.exists():
            shutil.rmtree(self.libs_dir)  # a stale, incomplete copy
        try:
            tmp.rename(self.libs_dir)
        except OSError:  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
        if not marker.exists():
            raise BrokerError(f"Kafka jars missing from {self.libs_dir} after mvn ran")
        return self.libs_dir

    @staticmethod
    def _need_java() -> None:
        if shutil.which("java") is None:
            raise BrokerError("java not found on PATH: Kafka needs a JRE 17+ (apt-get install openjdk-17-jre-headless)")

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_mode()
        tls = make_tls(self.tls_dir) if self.security == "sasl_ssl" else None
        props = broker_properties(self.log_dir, self.port, self.controller_port, self.partitions,
                                  security=self.security, admin_password=self.admin_password(), tls=tls)
        # It holds the admin's password when security is on: the owner alone reads it.
        write_private(self.properties_file, render_properties(props))
        self.log4j_file.write_text(log4j2_properties(self.log_file))

    def _check_mode(self) -> None:
        """A data dir formatted without the admin's SCRAM credential cannot become a secured broker."""
        mode_file = self.data_dir / "security-mode"
        if not self.is_formatted():
            return
        formatted = mode_file.read_text().strip() if mode_file.exists() else "none"
        if (formatted == "none") != (self.security == "none"):
            raise BrokerError(f"{self.data_dir} was formatted with Kafka security {formatted!r}, not "
                              f"{self.security!r}: remove that folder (its topics go with it) or keep the mode")

    def is_formatted(self) -> bool:
        return (self.log_dir / "meta.properties").exists()

    def format(self) -> None:
        """Format the KRaft storage with a fresh cluster id, unless data_dir already holds one."""
        self._write_config()
        if self.is_formatted():
            return  # a restarted broker keeps its topics and committed offsets
        self._need_java()
        cid = random_cluster_id()
        args = ["format", "-t", cid, "-c", str(self.properties_file)]
        if self.security != "none":
            # The admin's SCRAM credential goes into the first metadata; the arguments travel in a 0600
            # @argfile (StorageTool reads it) so the password never shows in the process list.
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={ADMIN_USER},password={self.admin_password()}]"]
        argfile = self.secrets_dir / "format.args"
        write_private(argfile, "\n".join(args) + "\n")  # one argument a line (no blanks in any)
        try:
            cmd = self._java(STORAGE_TOOL, f"@{argfile}")
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        finally:
            argfile.unlink(missing_ok=True)
        if done.returncode != 0 or not self.is_formatted():
            raise BrokerError(f"kafka-storage format failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        (self.data_dir / "security-mode").write_text(f"{self.security}\n")

    def pid(self) -> int | None:
        """The broker's pid from the pid file, if that process is still a live Kafka JVM."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._proc is not None and self._proc.pid == pid:
            # Our own child: waitpid is exact, and it reaps the zombie of a broker that died.
            return pid if self._proc.poll() is None else None
        return pid if _alive(pid) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 90) -> str:
        """Start the broker detached and wait until it serves metadata; returns the bootstrap address."""
        if self.is_running():
            self._wait_ready(timeout)
            return self.bootstrap
        self.fetch()
        self.format()
        for p in (self.port, self.controller_port):
            if port_open(p):
                raise BrokerError(f"port {p} on 127.0.0.1 is already taken by another process")
        console = open(self.data_dir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            # Own session: the broker outlives this process and ^C in a shell does not reach it.
            self._proc = subprocess.Popen(
                self._java(MAIN_CLASS, str(self.properties_file)),
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise BrokerError(f"could not run java: {e}") from e
        finally:
            console.close()
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        return self.bootstrap

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # aiokafka logs an ERROR per refused connection while the JVM boots; that is expected here.
        quiet = logging.getLogger("aiokafka")
        old = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            while time.monotonic() < deadline:
                if not self.is_running():
                    raise BrokerError(f"Kafka exited during start; see {self.log_file} and console.log")
                if port_open(self.port) and _run_coroutine(serves_metadata(self.bootstrap, **self.admin_options())):
                    return
                time.sleep(0.25)
        finally:
            quiet.setLevel(old)
        raise BrokerError(f"Kafka did not serve metadata on {self.bootstrap} in {timeout:.0f}s; see {self.log_file}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (a clean shutdown that keeps data), then SIGKILL after timeout."""
        pid = self.pid()
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and self.pid() is not None:
                    time.sleep(0.1)
                if self.pid() is None:
                    break
            if self.pid() is not None:
                raise BrokerError(f"Kafka (pid {pid}) survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        self._proc = None


def _build(args: argparse.Namespace) -> KafkaBroker:
    settings = Settings.load()
    if args.port:
        settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{args.port}"})
    return KafkaBroker.for_settings(settings, Path(args.data) if args.data else None, version=args.version,
                                    controller_port=args.controller_port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kafka.launcher", description=__doc__)
    parser.add_argument("command", choices=["fetch", "start", "stop", "status"])
    parser.add_argument("--port", type=int, default=None, help="client port (default: from kafka_bootstrap)")
    parser.add_argument("--controller-port", type=int, default=None, help="KRaft controller port (default: port+1)")
    parser.add_argument("--data", default=None, help="data folder (default: <home>/kafka)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Kafka version from Maven Central")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    broker = _build(args)
    try:
        if args.command == "fetch":
            print(broker.fetch())
        elif args.command == "start":
            t0 = time.monotonic()
            print(f"{broker.start(args.timeout)} (ready in {time.monotonic() - t0:.1f}s, log {broker.log_file})")
        elif args.command == "stop":
            broker.stop()
            print("stopped")
        else:
            pid = broker.pid()
            print(f"running pid {pid} on {broker.bootstrap}" if pid else "not running")
            return 0 if pid else 1
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
