"""The broker authenticates every client (SASL/SCRAM) and its ACLs confine each role and tenant: each refusal
asserted here is the broker's own answer (an authorization or authentication error), not a client check."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError, KafkaConnectionError, TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from infra.kafka.security import (
    LITERAL, ROLES, TOPIC, WRITE, add_tenant, provision, role_acls, tenant_acls, tenant_user,
)
from selfevolve.config import Settings
from selfevolve.wire.topics import Topics
from streams.kafka_io import client_options, ensure_topics, producer

REFUSED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)


@dataclass
class World:
    admin: Settings
    topics: Topics
    users: dict[str, Settings]  # principal -> settings that sign in as it


@pytest.fixture
def world(make_settings) -> World:
    admin = make_settings()
    topics = Topics.from_settings(admin)
    asyncio.run(ensure_topics(admin, topics.all() + topics.tenant_topics("acme") + topics.tenant_topics("other")))
    passwords = provision(admin)
    passwords[tenant_user("acme")] = add_tenant(admin, "acme")
    passwords[tenant_user("other")] = add_tenant(admin, "other")
    users = {user: admin.model_copy(update={"kafka_username": user, "kafka_password": pw})
             for user, pw in passwords.items()}
    return World(admin, topics, users)


async def _write(settings: Settings, topic: str) -> None:
    p = producer(settings, request_timeout_ms=10_000)
    try:
        await p.start()
        await asyncio.wait_for(p.send_and_wait(topic, b"probe", key=b"k"), 20)
    finally:
        await p.stop()


async def _read(settings: Settings, topic: str) -> list[bytes]:
    """The records of partition 0 of topic, read by assignment (no group), as the principal of settings."""
    c = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                         request_timeout_ms=10_000, **client_options(settings))
    try:
        await c.start()
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        await c.seek_to_beginning(tp)
        got = await asyncio.wait_for(c.getmany(tp, timeout_ms=3000), 20)
        # aiokafka does not raise for an assigned topic the broker refuses: it logs it and keeps the
        # broker's metadata answer (error 29, TOPIC_AUTHORIZATION_FAILED) in its cluster view.
        if topic in c._client.cluster.unauthorized_topics:  # noqa: SLF001
            raise TopicAuthorizationFailedError(topic)
        return [m.value for m in got.get(tp, [])]
    finally:
        await c.stop()


def can_write(settings: Settings, topic: str) -> bool:
    try:
        asyncio.run(_write(settings, topic))
    except REFUSED:
        return False
    return True


def can_read(settings: Settings, topic: str) -> bool:
    try:
        asyncio.run(_read(settings, topic))
    except REFUSED:
        return False
    return True


def test_a_client_without_credentials_is_refused(world: World) -> None:
    topic = world.topics.queries_for("acme")
    anonymous = world.admin.model_copy(update={"kafka_security": "none"})
    with pytest.raises(KafkaConnectionError):  # the SASL listener drops a client that does not authenticate
        asyncio.run(asyncio.wait_for(_write(anonymous, topic), 60))
    assert can_write(world.users[tenant_user("acme")], topic)  # the same write, signed in, goes through


def test_a_wrong_password_is_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    wrong = world.users[tenant_user("acme")].model_copy(update={"kafka_password": SecretStr("not-the-password")})
    with pytest.raises(KafkaConnectionError):
        asyncio.run(asyncio.wait_for(_write(wrong, world.topics.queries_for("acme")), 60))
    # aiokafka logs the broker's answer (error 58) and then gives up bootstrapping.
    assert "SaslAuthenticationFailed" in caplog.text and "invalid credentials" in caplog.text


def test_a_tenant_writes_only_its_own_queries_and_feedback(world: World) -> None:
    acme, t = world.users[tenant_user("acme")], world.topics
    assert can_write(acme, t.queries_for("acme")) and can_write(acme, t.feedback_for("acme"))
    forbidden = [t.route_decisions, t.inference_responses, t.strategy, t.scores, t.answers, t.queries,
                 t.feedback, t.queries_for("other"), t.feedback_for("other"), t.answers_for("acme"),
                 t.requests_for("replay"), t.model_events, t.dead_letter, t.history]
    allowed = [topic for topic in forbidden if can_write(acme, topic)]
    assert allowed == [], f"tenant-acme could write {allowed}"


def test_a_tenant_reads_only_its_own_answers(world: World) -> None:
    acme, serve, t = world.users[tenant_user("acme")], world.users["serve"], world.topics
    # The serve role writes the tenant's answers; the tenant reads them.
    assert can_write(serve, t.answers_for("acme"))
    assert b"probe" in asyncio.run(_read(acme, t.answers_for("acme")))
    # history: every tenant's delivered texts and answers (streams/history_follow.py).
    for topic in (t.answers_for("other"), t.answers, t.queries_for("acme"), t.scores, t.route_decisions, t.history):
        assert can_write(acme if topic == t.queries_for("acme") else serve, topic)  # a record to read
        assert b"probe" in asyncio.run(_read(world.admin, topic))
        assert not can_read(acme, topic), topic


def test_each_role_writes_only_what_it_owns(world: World) -> None:
    u, t = world.users, world.topics
    assert not can_write(u["model"], t.answers) and not can_write(u["model"], t.route_decisions)
    assert can_write(u["model"], t.inference_responses)
    assert not can_write(u["serve"], t.inference_responses)  # only model workers write responses
    assert can_write(u["serve"], t.route_decisions) and can_write(u["serve"], t.answers)
    assert not can_write(u["history"], t.answers) and not can_write(u["serve"], t.queries)


def test_only_the_history_role_writes_strategy(world: World) -> None:
    u, t = world.users, world.topics
    writers = {user for user in ("serve", "history", "model", tenant_user("acme")) if can_write(u[user], t.strategy)}
    assert writers == {"history"}


def test_only_the_serve_role_writes_history(world: World) -> None:
    """A forged delivery on the history topic would join every serve worker's history and answer cache."""
    u, t = world.users, world.topics
    users = (*ROLES, tenant_user("acme"))
    assert {user for user in users if can_write(u[user], t.history)} == {"serve"}


@pytest.mark.parametrize("prefix", ["selfevolve.", "prod-", ""])
def test_under_any_topic_prefix_only_the_serve_acls_cover_writing_history(prefix: str) -> None:
    """Without a broker: under a topic prefix without a dot, a role's Faust app id (history role: <prefix>history)
    is the history topic's name, so a prefixed ACL on it would cover that topic too."""
    s = Settings(topic_prefix=prefix)
    history = Topics.from_settings(s).history
    acls = {**{r: role_acls(s, r) for r in ROLES}, "tenant-acme": tenant_acls(s, "acme")}
    writers = {who for who, granted in acls.items() for a in granted if a.resource == TOPIC and a.operation == WRITE
               and (a.name == history if a.pattern == LITERAL else history.startswith(a.name))}
    assert writers == {"serve"}


def test_sasl_ssl_broker_serves_only_clients_that_trust_its_ca(new_broker, topic_prefix: str) -> None:
    broker = new_broker("sasl_ssl")
    broker.start()
    tls = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=topic_prefix, kafka_security="sasl_ssl",
                   kafka_username="admin", kafka_password=broker.admin_password(), kafka_ca_file=broker.ca_file)
    topic = f"{topic_prefix}tls"
    asyncio.run(ensure_topics(tls, [topic]))
    assert can_write(tls, topic) and asyncio.run(_read(tls, topic)) == [b"probe"]
    # Without TLS, and with TLS that trusts only the system's CAs, the same credential gets nowhere.
    for other in (tls.model_copy(update={"kafka_security": "sasl"}), tls.model_copy(update={"kafka_ca_file": None})):
        with pytest.raises(KafkaConnectionError):
            asyncio.run(asyncio.wait_for(_write(other, topic), 60))
    # The CA's private key is gone: nothing on disk can sign another certificate these clients would trust.
    assert sorted(p.name for p in broker.tls_dir.iterdir()) == ["broker.p12", "broker.pem", "ca.pem",
                                                                 "keystore-password"]
