"""Small aiokafka helpers shared by the CLI, the replay driver and the benchmarks."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from selfevolve.config import Settings
from selfevolve.errors import BrokerError
from selfevolve.topics import Topics


async def ensure_topics(settings: Settings, names: list[str] | None = None) -> None:
    """Create every pipeline topic up front so partition counts match (Faust co-partitions by key)."""
    names = names or Topics.from_settings(settings).all()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
    except Exception as e:  # noqa: BLE001 - aiokafka raises several kinds here
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {e}") from e
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, settings.topic_partitions, 1) for n in names if n not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except Exception:  # noqa: BLE001 - a concurrent creator may have won the race
                pass
    finally:
        await admin.close()


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for d in described if d.get("error_code", 0) == 0
                  for p in d.get("partitions", []))


def producer(settings: Settings, **kw) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True,
                            linger_ms=5, **kw)


async def tail_consumer(settings: Settings, topic: str, from_beginning: bool) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of `topic`, at the start or at the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed",
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


async def committing_consumer(settings: Settings, group: str, topics: list[str], on_revoke,
                              max_poll_records: int) -> AIOKafkaConsumer:
    """A started group consumer that commits only when told (after its work is durable); on_revoke() runs
    before a rebalance takes partitions away, so pending work can be finished and committed first."""

    class OnRevoke(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            await on_revoke()

        async def on_partitions_assigned(self, assigned):
            pass

    await ensure_topics(settings, topics)  # a subscription to a missing topic sees it only at the next refresh
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}{group}".replace(".", "-"), enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=max_poll_records)
    consumer.subscribe(topics, listener=OnRevoke())
    await consumer.start()
    return consumer
