"""Small aiokafka helpers shared by the CLI, the replay driver and the benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ConfigError
from selfevolve.wire.topics import Topics

SCRAM_MECHANISM = "SCRAM-SHA-512"


def security_options(security: str, username: str | None, password: str | None,
                     ca_file: Path | None = None) -> dict:
    """aiokafka keyword arguments for a Kafka security mode: {} for "none", SASL/SCRAM for "sasl", and
    SASL/SCRAM over TLS trusting ca_file (the system's CAs when None) for "sasl_ssl"."""
    if security == "none":
        return {}
    if security not in ("sasl", "sasl_ssl"):
        raise ConfigError(f"unknown kafka_security {security!r}; expected none, sasl or sasl_ssl")
    if not username or not password:
        raise ConfigError(f"kafka_security={security} needs kafka_username and kafka_password "
                          "(a secrets folder: SELFEVOLVE_SECRETS_DIR)")
    opts = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": username, "sasl_plain_password": password}
    if security == "sasl_ssl":
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the Kafka CA certificate {ca_file}: {e}") from e
        opts.update(security_protocol="SASL_SSL", ssl_context=context)
    return opts


def client_options(settings: Settings) -> dict:
    """The security keyword arguments of every aiokafka client (admin, producer, consumer) of this process."""
    password = settings.kafka_password.get_secret_value() if settings.kafka_password else None
    return security_options(settings.kafka_security, settings.kafka_username, password, settings.kafka_ca_file)


def faust_credentials(settings: Settings) -> dict:
    """faust.App keyword arguments with the same credentials (none when security is off)."""
    opts = client_options(settings)
    if not opts:
        return {}
    import faust  # only the stream workers need Faust

    return {"broker_credentials": faust.SASLCredentials(
        username=opts["sasl_plain_username"], password=opts["sasl_plain_password"],
        mechanism=opts["sasl_mechanism"], ssl_context=opts.get("ssl_context"))}


@contextlib.asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client signed in as this process's principal, closed on exit; BrokerError when the
    broker cannot be reached or refuses the credential."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **client_options(settings))
    try:
        await admin.start()
    except Exception as e:  # noqa: BLE001 - aiokafka raises several kinds here
        who = f" as {settings.kafka_username}" if settings.kafka_username else ""
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap}{who}: {e}") from e
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, names: list[str] | None = None, compact: bool = False) -> None:
    """Create every pipeline topic up front so partition counts match (Faust co-partitions by key);
    compact=True makes them compacted changelogs, which keep the latest value per key."""
    names = names or Topics.from_settings(settings).all()
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        configs = {"cleanup.policy": "compact"} if compact else {}
        new = [NewTopic(n, settings.topic_partitions, 1, topic_configs=configs) for n in names if n not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except Exception:  # noqa: BLE001 - a concurrent creator may have won the race
                pass


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    async with admin_client(settings) as admin:
        described = await admin.describe_topics([topic])
    return sorted(p["partition"] for d in described if d.get("error_code", 0) == 0
                  for p in d.get("partitions", []))


def producer(settings: Settings, **kw) -> AIOKafkaProducer:
    kw.setdefault("max_request_size", settings.kafka_max_message_bytes)  # what the broker accepts
    return AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True,
                            linger_ms=5, **client_options(settings), **kw)


async def tail_consumer(settings: Settings, topic: str, from_beginning: bool) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of `topic`, at the start or at the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", **client_options(settings),
                                client_id=f"tail-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    deadline = time.time() + 30
    parts = await partitions_of(settings, topic)
    while not parts and time.time() < deadline:
        await asyncio.sleep(0.5)
        parts = await partitions_of(settings, topic)
    if not parts:
        await consumer.stop()
        raise BrokerError(f"topic {topic} does not exist on {settings.kafka_bootstrap}")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if from_beginning:
        await consumer.seek_to_beginning(*tps)
    else:
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the lazy seek now, so records produced after this call are seen
            await consumer.position(tp)
    return consumer


def group_id(settings: Settings, group: str) -> str:
    return f"{settings.topic_prefix}{group}".replace(".", "-")


async def transactional_producer(settings: Settings, name: str) -> AIOKafkaProducer:
    """A started producer for consume-transform-produce: a batch's outputs and its consumed offsets commit in
    one transaction, so read_committed readers see each batch once or not at all. The stable id makes a
    restarted worker fence its killed predecessor and abort that one's open transaction: start it before
    the consumer, so a restore reads past the aborted writes. One live process per id (per topic prefix)."""
    # A batch whose answers run code checks (up to 3 s each) can outlast the 60 s default before it commits.
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, **client_options(settings),
                         max_request_size=settings.kafka_max_message_bytes,
                         transactional_id=group_id(settings, name), transaction_timeout_ms=300_000)
    await p.start()
    return p


async def committing_consumer(settings: Settings, group: str, topics: list[str], on_revoke,
                              max_poll_records: int, on_assign=None, pattern: str | None = None) -> AIOKafkaConsumer:
    """A started group consumer that commits only when told (after its work is durable); on_revoke(revoked)
    runs before a rebalance takes partitions away, so pending work can be finished and committed first, and
    on_assign(assigned) before the first fetch from new partitions (to rebuild their state). With a regex
    `pattern`, it subscribes to every topic matching it instead (topics are only created up front)."""

    class OnRevoke(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            await on_revoke(revoked)

        async def on_partitions_assigned(self, assigned):
            if on_assign is not None:
                await on_assign(assigned)

    await ensure_topics(settings, topics)  # a subscription to a missing topic sees it only at the next refresh
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings),
        group_id=group_id(settings, group), enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=max_poll_records,
        # A pattern finds new matching topics (a tenant added) at each metadata refresh.
        **({"metadata_max_age_ms": settings.tenant_topic_refresh_ms} if pattern else {}))
    if pattern:
        consumer.subscribe(pattern=pattern, listener=OnRevoke())
    else:
        consumer.subscribe(topics, listener=OnRevoke())
    await consumer.start()
    return consumer


async def transactional_loop(settings: Settings, name: str, topics: list[str], max_records: int, handle,
                             stop: asyncio.Event | None = None, on_assign=None, pattern: str | None = None) -> None:
    """Consume-transform-produce until cancelled (or `stop` is set): the records of each poll go to
    `await handle(producer, records)`, and what it sends commits with their offsets in one transaction."""
    producer = await transactional_producer(settings, name)  # first: it aborts a killed predecessor's batch

    async def on_revoke(revoked) -> None:
        pass  # the batch in progress finishes in its transaction

    # aiokafka hands out records of new partitions before its on_partitions_assigned callback has finished
    # (it marks the assignment done first): a batch waits for the callback (a state restore) to finish.
    assigning = asyncio.Lock()

    async def assigned(partitions) -> None:
        async with assigning:
            await on_assign(partitions)

    consumer = await committing_consumer(settings, name, topics, on_revoke, max_records,
                                         on_assign=assigned if on_assign is not None else None, pattern=pattern)
    try:
        while stop is None or not stop.is_set():
            got = await consumer.getmany(timeout_ms=500, max_records=max_records)
            if not got:
                continue
            async with assigning, producer.transaction():
                await handle(producer, [m for msgs in got.values() for m in msgs])
                await producer.send_offsets_to_transaction({tp: msgs[-1].offset + 1 for tp, msgs in got.items()},
                                                           group_id(settings, name))
    finally:
        await consumer.stop()
        await producer.stop()
