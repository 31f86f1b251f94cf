"""Kafka principals and ACLs per role and tenant: SCRAM users, prefix ACLs, and provisioning them as the admin.
The credential files (secrets folders, TLS material) are infra/kafka/credentials.py, re-exported here."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array, CompactArray, CompactBytes, CompactString, Int8, Int16, Int32, Schema, String, TaggedFields,
)
from pydantic import SecretStr

from infra.kafka.credentials import ADMIN_USER, SCRAM_MECHANISM, make_tls, secret_file, write_private, write_secrets
from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ConfigError
from streams.kafka_io import admin_client, ensure_topics, group_id, security_options

SCRAM_ITERATIONS = 8192  # Kafka accepts 4096..16384 for SHA-512
ROLES = ("serve", "history", "model", "gateway")
CLUSTER = "kafka-cluster"  # the one name of the cluster resource

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
    return group_id(settings, name)  # the group and transactional-id naming of the stream workers


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
                + _allow(TOPIC, [p + "dead-letter", p + "history"], LITERAL, WRITE)
                + _allow(TOPIC, [p + "scorer-state-changelog"], LITERAL, CREATE, WRITE, DESCRIBE_CONFIGS)
                + _faust_internal(faust) + _allow(GROUP, groups, LITERAL, READ, DESCRIBE)
                # One transactional id per input task (<group>-<topic>-<partition>, streams/kafka_io.py).
                + _allow(TRANSACTIONAL_ID, groups[1:], PREFIXED, WRITE, DESCRIBE) + _idempotent())
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
    if role == "gateway":
        # The OpenAI-compatible edge (streams/gateway.py) speaks for the tenants whose API keys it holds: it
        # writes their queries.<T> and feedback.<T> and reads their answers.<T>; no shared or internal topic.
        # Group-less (it assigns partitions itself), so it needs no group.
        return (_allow(TOPIC, [p + "queries.", p + "feedback."], PREFIXED, WRITE, DESCRIBE)
                + _allow(TOPIC, [p + "answers."], PREFIXED, READ, DESCRIBE) + _idempotent())
    raise ConfigError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def _faust_internal(app_id: str) -> list[Acl]:
    """A Faust app's own topics (table changelogs, the assignor's leader topic) and exactly-once txn ids,
    all named <app id>-...: it creates them at start."""
    # The topics' prefix ends in "-": under a topic prefix without a dot (`prod-`) the history app's id is
    # the history topic's name (`prod-history`), which only the serve role may write.
    return (_allow(TOPIC, [app_id + "-"], PREFIXED, CREATE, READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS)
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
    async with admin_client(settings_admin) as admin:
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
    for user, password in users.items():
        await _until_signed_in(settings_admin, user, password)


async def _until_signed_in(settings_admin: Settings, user: str, password: str, timeout: float = 30.0) -> None:
    """Wait until the broker accepts the new credential: the controller commits it at once, but the broker
    serving clients learns it from the metadata log a moment later."""
    import asyncio
    import logging
    import time

    from aiokafka import AIOKafkaClient

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

    user = tenant_user(tenant)
    _run(ensure_topics(settings_admin, Topics.from_settings(settings_admin).tenant_topics(tenant)))
    if settings_admin.kafka_security == "none":
        return None
    _require_admin(settings_admin)
    password = SecretStr(secrets.token_urlsafe(32))
    _run(_admin_call(settings_admin, {user: password.get_secret_value()}, {user: tenant_acls(settings_admin, tenant)}))
    return password


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.kafka.security provision --passwords-dir D`: as the admin of Settings.load(), create
    every topic, and the role principals with the passwords in D/<role>_kafka_password and their ACLs
    (docker-compose's kafka-setup service)."""
    import argparse
    import sys

    from selfevolve.errors import SelfEvolveError

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
