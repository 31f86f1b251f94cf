"""Kafka principals and ACLs per role and tenant (SCRAM users, prefix ACLs), TLS material and 0600 secret files."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array, CompactArray, CompactBytes, CompactString, Int8, Int16, Int32, Schema, String, TaggedFields,
)
from pydantic import SecretStr

from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ConfigError

ADMIN_USER = "admin"  # the one super user: tooling, tests, topic and ACL creation
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192  # Kafka accepts 4096..16384 for SHA-512
ROLES = ("serve", "history", "model")
CLUSTER = "kafka-cluster"  # the one name of the cluster resource
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

# Kafka's wire codes (org.apache.kafka.common.acl / resource).
TOPIC, GROUP, CLUSTER_RESOURCE, TRANSACTIONAL_ID = 2, 3, 4, 5
LITERAL, PREFIXED = 3, 4
READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS, IDEMPOTENT_WRITE = 3, 4, 5, 8, 10, 12
ALLOW = 3
_SCRAM_CODES = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}


@dataclass(frozen=True)
class Acl:
    """ALLOW `operation` on one resource (or every resource whose name starts with `name` when prefixed)."""

    resource: int
    name: str
    pattern: int
    operation: int


def principal(user: str) -> str:
    return f"User:{user}"


def _gid(settings: Settings, name: str) -> str:
    from streams.kafka_io import group_id  # the group and transactional-id naming of the stream workers

    return group_id(settings, name)


def _allow(resource: int, names: list[str], pattern: int, *ops: int) -> list[Acl]:
    return [Acl(resource, n, pattern, op) for n in names for op in ops]


def role_acls(settings: Settings, role: str) -> list[Acl]:
    """The ACLs of a fixed role (docs: notes/tenancy.md): read what it consumes, write only what it owns."""
    p = settings.topic_prefix
    if role == "serve":
        # The Faust app's group, then the transactional loops' (streams/router.py, scorer.py, feedback.py).
        loops = ("streams", "router", "scorer", "feedback")
        faust, groups = _gid(settings, "streams"), [_gid(settings, g) for g in loops]
        return (_allow(TOPIC, [p], PREFIXED, READ, DESCRIBE)
                + _allow(TOPIC, [p + t for t in ("route-decisions", "inference-requests", "scores", "answers")],
                         PREFIXED, WRITE)
                + _allow(TOPIC, [p + "dead-letter"], LITERAL, WRITE)
                + _allow(TOPIC, [p + "scorer-state-changelog"], LITERAL, CREATE, WRITE, DESCRIBE_CONFIGS)
                + _faust_internal(faust) + _allow(GROUP, groups, LITERAL, READ, DESCRIBE)
                + _allow(TRANSACTIONAL_ID, groups[1:], LITERAL, WRITE, DESCRIBE) + _idempotent())
    if role == "history":
        faust, groups = _gid(settings, "history"), [_gid(settings, g) for g in ("history", "sink")]
        return (_allow(TOPIC, [p], PREFIXED, READ, DESCRIBE)
                + _allow(TOPIC, [p + t for t in ("model-events", "gaps", "spawns", "strategy", "dead-letter")],
                         LITERAL, WRITE)
                + _faust_internal(faust) + _allow(GROUP, groups, LITERAL, READ, DESCRIBE) + _idempotent())
    if role == "model":
        # workers/model_worker.py and workers/trainer.py name their groups and transactional ids so.
        reads = [p + t for t in ("route-decisions", "inference-responses", "scores", "spawns", "model-events")]
        return (_allow(TOPIC, [p + "inference-requests"], PREFIXED, READ, DESCRIBE)
                + _allow(TOPIC, reads, LITERAL, READ, DESCRIBE)
                + _allow(TOPIC, [p + t for t in ("inference-responses", "dead-letter", "model-events")],
                         LITERAL, WRITE)
                + _allow(GROUP, ["selfevolve-model-workers", "selfevolve-trainer"], LITERAL, READ, DESCRIBE)
                + _allow(TRANSACTIONAL_ID, ["selfevolve-model-worker-"], PREFIXED, WRITE, DESCRIBE)
                + _idempotent())
    raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def _faust_internal(app_id: str) -> list[Acl]:
    """A Faust app's own topics (table changelogs, the assignor's leader topic) and exactly-once txn ids,
    all named <app id>-...: it creates them at start."""
    return (_allow(TOPIC, [app_id], PREFIXED, CREATE, READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS)
            + _allow(TRANSACTIONAL_ID, [app_id], PREFIXED, WRITE, DESCRIBE))


def _idempotent() -> list[Acl]:
    return _allow(CLUSTER_RESOURCE, [CLUSTER], LITERAL, IDEMPOTENT_WRITE)


def tenant_acls(settings: Settings, tenant: str) -> list[Acl]:
    """Tenant T writes its own queries and feedback topics and reads its own answers topic; nothing else."""
    from selfevolve.wire.topics import Topics

    t = Topics.from_settings(settings)
    return (_allow(TOPIC, [t.queries_for(tenant), t.feedback_for(tenant)], LITERAL, WRITE, DESCRIBE)
            + _allow(TOPIC, [t.answers_for(tenant)], LITERAL, READ, DESCRIBE))


def tenant_user(tenant: str) -> str:
    from selfevolve.wire.tenancy import check_tenant

    return f"tenant-{check_tenant(tenant)}"


# The two admin requests aiokafka has no method for, on its own protocol classes.
class _AlterScramResponse(Response):
    API_KEY, API_VERSION = 51, 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(("user", CompactString("utf-8")), ("error_code", Int16),
                                 ("error_message", CompactString("utf-8")), ("tags", TaggedFields))),
        ("tags", TaggedFields))


class _AlterScramStruct(RequestStruct):
    API_KEY, API_VERSION, FLEXIBLE_VERSION, RESPONSE_TYPE = 51, 0, True, _AlterScramResponse
    SCHEMA = Schema(
        ("deletions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields))),
        ("upsertions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("iterations", Int32),
                                    ("salt", CompactBytes), ("salted_password", CompactBytes), ("tags", TaggedFields))),
        ("tags", TaggedFields))

    def __repr__(self) -> str:  # aiokafka logs requests at DEBUG: a salted password is a password equivalent
        return f"AlterUserScramCredentials(users={[u[0] for u in self.upsertions]})"


class _AlterScram(Request[_AlterScramStruct]):
    API_KEY = 51

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def build(self, request_struct_class: type[_AlterScramStruct]) -> _AlterScramStruct:
        ups = []
        for name, password in self.users.items():
            salt = os.urandom(32)
            salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, SCRAM_ITERATIONS)  # RFC 5802 Hi()
            ups.append((name, _SCRAM_CODES[SCRAM_MECHANISM], SCRAM_ITERATIONS, salt, salted, {}))
        return request_struct_class([], ups, {})


class _CreateAclsResponse(Response):
    API_KEY, API_VERSION = 30, 1
    SCHEMA = Schema(("throttle_time_ms", Int32),
                    ("creation_responses", Array(("error_code", Int16), ("error_message", String("utf-8")))))


class _CreateAclsStruct(RequestStruct):
    API_KEY, API_VERSION, RESPONSE_TYPE = 30, 1, _CreateAclsResponse
    SCHEMA = Schema(("creations", Array(
        ("resource_type", Int8), ("resource_name", String("utf-8")), ("resource_pattern_type", Int8),
        ("principal", String("utf-8")), ("host", String("utf-8")), ("operation", Int8), ("permission_type", Int8))))


class _CreateAcls(Request[_CreateAclsStruct]):
    API_KEY = 30

    def __init__(self, user: str, acls: list[Acl]) -> None:
        self.user, self.acls = user, acls

    def build(self, request_struct_class: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return request_struct_class([(a.resource, a.name, a.pattern, principal(self.user), "*", a.operation, ALLOW)
                                     for a in self.acls])


async def _admin_call(settings_admin: Settings, users: dict[str, str], acls: dict[str, list[Acl]]) -> None:
    """One admin connection: upsert the SCRAM users, then every ACL of each user in one request."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka_io import client_options

    admin = AIOKafkaAdminClient(bootstrap_servers=settings_admin.kafka_bootstrap, **client_options(settings_admin))
    try:
        await admin.start()
    except Exception as e:  # noqa: BLE001 - aiokafka raises several kinds here
        raise BrokerError(f"cannot reach Kafka at {settings_admin.kafka_bootstrap} as admin: {e}") from e
    try:
        if users:
            resp = await admin._send_request(_AlterScram(users))  # noqa: SLF001 - aiokafka's own send path
            bad = [(u, code, msg) for u, code, msg, _ in resp.results if code]
            if bad:
                raise BrokerError(f"cannot create SCRAM users: {bad}")
        for user, user_acls in acls.items():
            resp = await admin._send_request(_CreateAcls(user, user_acls))  # noqa: SLF001
            bad = [(code, msg) for code, msg in resp.creation_responses if code]
            if bad:
                raise BrokerError(f"cannot create the ACLs of {user}: {bad[:3]}")
    finally:
        await admin.close()
    for user, password in users.items():
        await _until_signed_in(settings_admin, user, password)


async def _until_signed_in(settings_admin: Settings, user: str, password: str, timeout: float = 30.0) -> None:
    """Wait until the broker accepts the new credential: the controller commits it at once, but the broker
    serving clients learns it from the metadata log a moment later."""
    import asyncio
    import logging
    import time

    from aiokafka import AIOKafkaClient

    from streams.kafka_io import security_options

    opts = security_options(settings_admin.kafka_security, user, password, settings_admin.kafka_ca_file)
    deadline = time.monotonic() + timeout
    quiet = logging.getLogger("aiokafka")
    old, quiet.level = quiet.level, logging.CRITICAL  # each early refusal logs an ERROR
    try:
        while True:
            client = AIOKafkaClient(bootstrap_servers=settings_admin.kafka_bootstrap, **opts)
            try:
                await client.bootstrap()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                if time.monotonic() > deadline:
                    raise BrokerError(f"the broker still refuses the new credential of {user}: {e}") from e
            finally:
                await client.close()
            await asyncio.sleep(0.2)
    finally:
        quiet.setLevel(old)


def _run(coro) -> None:
    from infra.kafka.launcher import _run_coroutine  # asyncio.run, also from inside a running loop

    _run_coroutine(coro)


def _require_admin(settings_admin: Settings) -> None:
    if settings_admin.kafka_username != ADMIN_USER:
        raise ConfigError(f"provisioning needs the {ADMIN_USER} principal, not {settings_admin.kafka_username!r}")


def provision(settings_admin: Settings, roles: tuple[str, ...] = ROLES,
              passwords: dict[str, SecretStr] | None = None) -> dict[str, SecretStr]:
    """Create (or update) the SCRAM user and the ACLs of each role; returns each role's password. A role in
    `passwords` keeps the password given (a restart re-provisions with the stored ones), the rest get a
    random one. Idempotent: ACLs that exist are left as they are."""
    _require_admin(settings_admin)
    given = passwords or {}
    out = {r: given.get(r) or SecretStr(secrets.token_urlsafe(32)) for r in roles}
    acls = {r: role_acls(settings_admin, r) for r in roles}
    _run(_admin_call(settings_admin, {r: out[r].get_secret_value() for r in roles}, acls))
    return out


def add_tenant(settings_admin: Settings, tenant: str) -> SecretStr | None:
    """Create tenant T's topics (P queries.T, P feedback.T, P answers.T) and, with Kafka security on, its
    SCRAM user tenant-T with a new random password (returned; a second call rotates it) and its ACLs.
    With security off it only creates the topics and returns None."""
    from selfevolve.wire.topics import Topics
    from streams.kafka_io import ensure_topics

    user = tenant_user(tenant)
    _run(ensure_topics(settings_admin, Topics.from_settings(settings_admin).tenant_topics(tenant)))
    if settings_admin.kafka_security == "none":
        return None
    _require_admin(settings_admin)
    password = SecretStr(secrets.token_urlsafe(32))
    _run(_admin_call(settings_admin, {user: password.get_secret_value()}, {user: tenant_acls(settings_admin, tenant)}))
    return password


def write_private(path: Path, text: str) -> None:
    """Write text to a file only its owner can read, in a folder only its owner can enter; atomic."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def secret_file(folder: Path, field: str) -> Path:
    """Where Settings.load() finds `field` in a secrets folder (pydantic-settings names it with the prefix)."""
    return folder / f"selfevolve_{field}"


def write_secrets(folder: Path, values: dict[str, str | SecretStr]) -> Path:
    """A secrets folder (Settings.secrets_dir) holding `values`, one 0600 file per Settings field."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for field, value in values.items():
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        write_private(secret_file(folder, field), text)
    folder.chmod(0o700)
    return folder


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


def make_tls(tls_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> dict[str, str]:
    """A private CA and a broker certificate it signs (for `hosts`), made once with openssl; returns the
    listener's ssl.* properties. The CA's key is deleted once the certificate is signed, so nothing on
    disk can mint another certificate that clients of this broker would trust."""
    keystore, password_file = tls_dir / "broker.p12", tls_dir / "keystore-password"
    if not keystore.exists():
        if shutil.which("openssl") is None:
            raise BrokerError("openssl not found on PATH: it makes the broker's TLS certificate "
                              "(apt-get install openssl)")
        write_private(password_file, secrets.token_urlsafe(24))
        san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
        write_private(tls_dir / "san.cnf", f"subjectAltName={san}\n")
        env = {**os.environ, "SELFEVOLVE_KS": password_file.read_text().strip()}  # never in argv
        steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=selfevolve-kafka-ca",
             "-keyout", "ca.key", "-out", "ca.pem"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}", "-keyout", "broker.key",
             "-out", "broker.csr"],
            ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "825", "-extfile", "san.cnf", "-out", "broker.pem"],
            ["pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
             "-name", "broker", "-passout", "env:SELFEVOLVE_KS", "-out", "broker.p12.tmp"],
        ]  # fmt: skip
        old_umask = os.umask(0o077)
        try:
            for step in steps:
                done = subprocess.run(["openssl", *step], cwd=tls_dir, env=env, capture_output=True, text=True,
                                      check=False)
                if done.returncode != 0:
                    raise BrokerError(f"openssl {step[0]} failed (exit {done.returncode}): {done.stderr[-1000:]}")
        finally:
            os.umask(old_umask)
            for name in ("ca.key", "broker.key", "broker.csr", "ca.srl", "san.cnf"):
                (tls_dir / name).unlink(missing_ok=True)
        (tls_dir / "broker.p12.tmp").rename(keystore)
        (tls_dir / "ca.pem").chmod(0o644)  # the CA certificate is public: clients need it
    password = password_file.read_text().strip()
    return {
        "ssl.keystore.type": "PKCS12", "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": password, "ssl.key.password": password,
        # The broker's own inter-broker client trusts the same CA.
        "ssl.truststore.type": "PEM", "ssl.truststore.location": str(tls_dir / "ca.pem"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.kafka.security provision --passwords-dir D`: as the admin of Settings.load(), create
    every topic, and the role principals with the passwords in D/<role>_kafka_password and their ACLs
    (docker-compose's kafka-setup service)."""
    import argparse
    import sys

    from selfevolve.errors import SelfEvolveError
    from streams.kafka_io import ensure_topics

    ap = argparse.ArgumentParser(prog="python -m infra.kafka.security", description=main.__doc__)
    ap.add_argument("command", choices=["provision"])
    ap.add_argument("--passwords-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        settings = Settings.load()
        passwords = {}
        for role in ROLES:
            f = args.passwords_dir / f"{role}_kafka_password"
            if not f.is_file() or not f.read_text().strip():
                raise ConfigError(f"no password for role {role} in {f}")
            passwords[role] = SecretStr(f.read_text().strip())
        _run(ensure_topics(settings))
        provision(settings, ROLES, passwords)
    except SelfEvolveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"provisioned {', '.join(ROLES)} on {settings.kafka_bootstrap}")
    return 0


__all__ = ["ADMIN_USER", "ROLES", "SCRAM_MECHANISM", "Acl", "add_tenant", "make_tls", "provision", "role_acls",
           "secret_file", "tenant_acls", "tenant_user", "write_private", "write_secrets"]


if __name__ == "__main__":
    raise SystemExit(main())
