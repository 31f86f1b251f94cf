"""The broker's own files and command line: server.properties (plain, or SASL/SCRAM with ACLs and TLS), the
log4j2 configuration, Java .properties escaping and the java command."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from infra.kafka.credentials import ADMIN_USER, SCRAM_MECHANISM
from selfevolve.config import KAFKA_MESSAGE_MAX_BYTES
from selfevolve.errors import BrokerError

# C1-only JIT halves start time on a busy 2-core box (measured 22.7 s -> 11.4 s at load 8); a dev/test
# broker never runs long enough to miss C2. SerialGC: small heap, no GC threads competing for cores.
JVM_FLAGS = ("-Xms256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def random_cluster_id() -> str:
    """A Kafka Uuid as StorageTool prints it: 16 random bytes, base64url without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # Kafka rejects ids that start with '-' (they read as CLI flags), so draw again.
        if not cid.startswith("-"):
            return cid


def broker_properties(
    log_dir: Path, port: int, controller_port: int, partitions: int = 1, node_id: int = 1,
    security: str = "none", admin_password: str | None = None, tls: dict[str, str] | None = None,
) -> dict[str, str]:
    """server.properties of a combined broker+controller that lives alone on 127.0.0.1; with security on,
    the client listener takes SASL/SCRAM (over TLS for sasl_ssl) and the StandardAuthorizer enforces ACLs."""
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": str(partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # One node: internal topics cannot have more replicas than brokers.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Fewer internal partitions make the first group/transaction start in well under a second.
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.num.partitions": "8",
        # Tests and demos start consumers one by one; waiting 3 s for more members only slows them.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # Every producer's max_request_size too (Settings.kafka_max_message_bytes): what one sends, the broker takes.
        "message.max.bytes": str(KAFKA_MESSAGE_MAX_BYTES),
        # The dev machine has 2 cores shared by many: keep the thread count small.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
    }
    if security != "none":
        props.update(secure_properties(port, controller_port, security, admin_password or "", tls))
    return props


def secure_properties(port: int, controller_port: int, security: str, admin_password: str,
                      tls: dict[str, str] | None) -> dict[str, str]:
    """Listeners and authorizer of a secured broker. Every listener authenticates: clients and the broker
    itself (inter-broker, as admin) with SCRAM; the controller listener with PLAIN and a static admin entry,
    because a KRaft controller cannot read SCRAM credentials from the metadata it serves. No listener
    leaves an anonymous principal that could be made a super user."""
    if security not in ("sasl", "sasl_ssl"):
        raise BrokerError(f"unknown Kafka security mode {security!r}; expected sasl or sasl_ssl")
    if not admin_password or any(c in admin_password for c in '"\\;'):
        raise BrokerError("a secured broker needs an admin password without quotes, backslashes or ';'")
    if security == "sasl_ssl" and not tls:
        raise BrokerError("sasl_ssl needs the broker's keystore (KafkaBroker makes it)")
    user = f'username="{ADMIN_USER}" password="{admin_password}"'
    props = {
        "listeners": f"CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{port}",
        "inter.broker.listener.name": "CLIENT",
        "listener.security.protocol.map":
            f"CONTROLLER:SASL_PLAINTEXT,CLIENT:{'SASL_SSL' if security == 'sasl_ssl' else 'SASL_PLAINTEXT'}",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "listener.name.client.scram-sha-512.sasl.jaas.config":
            f"org.apache.kafka.common.security.scram.ScramLoginModule required {user};",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {user} "
            f'user_{ADMIN_USER}="{admin_password}";',
        "authorizer.class.name": AUTHORIZER,
        "super.users": f"User:{ADMIN_USER}",
        "allow.everyone.if.no.acl.found": "false",
    }
    if tls:
        props.update({f"listener.name.client.{k}": v for k, v in tls.items()})
    return props


def _escape(text: str, is_key: bool) -> str:
    """Java .properties escaping; Kafka reads the file as ISO-8859-1, so non-ASCII goes as \\uXXXX."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in ":=#!" and is_key or ch == " " and (is_key or i == 0):
            out.append("\\" + ch)  # these would end the key or be stripped as leading blanks
        elif not " " <= ch <= "~":
            units = ch.encode("utf-16-be")  # Java chars are UTF-16 units: astral chars need two
            out.extend(f"\\u{int.from_bytes(units[j:j + 2], 'big'):04x}" for j in range(0, len(units), 2))
        else:
            out.append(ch)
    return "".join(out)


def render_properties(props: dict[str, str]) -> str:
    """Java .properties text that Properties.load reads back as exactly these pairs."""
    return "".join(f"{_escape(k, True)}={_escape(v, False)}\n" for k, v in props.items())


def log4j2_properties(log_file: Path) -> str:
    """log4j2 config: everything at INFO into one file, nothing on the console."""
    path = _escape(str(log_file), False)
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {path}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
    )


def java_command(libs: Path, heap: str, log4j_file: Path, main: str, *args: str) -> list[str]:
    """The java command line that runs `main` over every jar in libs."""
    return [
        "java", f"-Xmx{heap}", *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={log4j_file}",
        "-cp", str(libs / "*"), main, *args,
    ]  # fmt: skip
