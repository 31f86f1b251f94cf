"""Small aiokafka helpers shared by the CLI, the replay driver and the benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ConfigError
from selfevolve.wire.topics import Topics
from streams.metrics import observe_batch

log = logging.getLogger("selfevolve.kafka")
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
        history = Topics.from_settings(settings).history
        # The history topic is one partition kept forever: every serve worker replays it in one order, from
        # the start or from its snapshot's offset (streams/history_follow.py).
        new = [NewTopic(n, 1, 1, topic_configs={"retention.ms": "-1"}) if n == history else
               NewTopic(n, settings.topic_partitions, 1, topic_configs=configs) for n in names if n not in existing]
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
    one transaction, so read_committed readers see each batch once or not at all. The stable id (`name`,
    under the topic prefix) makes whoever starts it next fence this one and abort its open transaction.
    One live producer per id."""
    # A batch whose answers run code checks (up to 3 s each) can outlast the 60 s default before it commits.
    p = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=2, **client_options(settings),
                         max_request_size=settings.kafka_max_message_bytes,
                         transactional_id=group_id(settings, name), transaction_timeout_ms=300_000)
    await p.start()
    return p


async def committing_consumer(settings: Settings, group: str, topics: list[str], on_revoke,
                              max_poll_records: int, on_assign=None, pattern: str | None = None,
                              range_assign: bool = False) -> AIOKafkaConsumer:
    """A started group consumer that commits only when told (after its work is durable); on_revoke(revoked)
    runs before a rebalance takes partitions away, so pending work can be finished and committed first, and
    on_assign(consumer, assigned) before the first fetch from new partitions (to fence, seek, rebuild state).
    With a regex `pattern`, it subscribes to every topic matching it instead (topics are only created up
    front). range_assign: partition p of every topic goes to one member (co-partitioned inputs)."""

    class OnRevoke(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            await on_revoke(revoked)

        async def on_partitions_assigned(self, assigned):
            if on_assign is not None:
                await on_assign(consumer, assigned)

    await ensure_topics(settings, topics)  # a subscription to a missing topic sees it only at the next refresh
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, **client_options(settings),
        group_id=group_id(settings, group), enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed", max_poll_records=max_poll_records,
        **({"partition_assignment_strategy": (RangePartitionAssignor,)} if range_assign else {}),
        # A pattern finds new matching topics (a tenant added) at each metadata refresh.
        **({"metadata_max_age_ms": settings.tenant_topic_refresh_ms} if pattern else {}))
    if pattern:
        consumer.subscribe(pattern=pattern, listener=OnRevoke())
    else:
        consumer.subscribe(topics, listener=OnRevoke())
    await consumer.start()
    return consumer


def by_partition(tp: TopicPartition) -> str:
    """The task of co-partitioned inputs (the scorer's decisions and responses): their partition number."""
    return f"p{tp.partition}"


def by_topic_partition(tp: TopicPartition) -> str:
    """The task of an input partition read on its own (queries, feedback): its topic and partition."""
    return f"{tp.topic}-{tp.partition}"


async def transactional_loop(settings: Settings, name: str, topics: list[str], max_records: int, handle,
                             stop: asyncio.Event | None = None, on_assign=None, pattern: str | None = None,
                             task_of=by_topic_partition) -> None:
    """Consume-transform-produce until cancelled (or `stop` is set), in consumer group `name`, which any
    number of processes may share. Each poll's records are split by input task (`task_of(partition)`), and
    each task's go to `await handle(producer, records)` with that task's producer: what it sends commits
    with the task's offsets in one transaction. The tasks of one poll run concurrently: `handle` must keep
    one task's state apart from another's.

    Fencing is per task, Kafka Streams' "EOS per task" scheme: each task has its own transactional id
    (`<name>-<task>`), so whichever worker a rebalance gives the task to fences the previous owner (a
    zombie, or a SIGKILLed worker) and aborts its open transaction before reading the task's committed
    offsets. aiokafka cannot do KIP-447 (send_offsets_to_transaction sends no group metadata), so one
    producer per task it is. Co-partitioned inputs must be range-assigned (partition p of each to one
    worker): `task_of=by_partition` asks for that."""
    tasks = _Tasks(settings, name, task_of)
    consumer = await committing_consumer(settings, name, topics, tasks.revoked, max_records,
                                         on_assign=lambda consumer, assigned: tasks.assigned(consumer, assigned, on_assign),
                                         pattern=pattern, range_assign=task_of is by_partition)
    try:
        while stop is None or not stop.is_set():
            got = await consumer.getmany(timeout_ms=500, max_records=max_records)
            if not got:
                continue
            t0, generation = time.perf_counter(), tasks.generation
            async with tasks.lock:
                # Each task's transaction is its own: their round trips overlap (one poll holds several).
                await asyncio.gather(*(tasks.commit(task, part, handle)
                                       for task, part in tasks.split(got, generation).items()))
            observe_batch(name, time.perf_counter() - t0, sum(len(m) for m in got.values()))
    finally:
        await consumer.stop()
        await tasks.close()


async def _committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The group's committed offset of tp, asked again while the coordinator is moving (a worker just died)."""
    from aiokafka.errors import KafkaError

    for attempt in range(20):
        try:
            return await consumer.committed(tp)
        except KafkaError as e:
            log.warning("fetching the committed offset of %s failed (%s); retrying", tp, e)
            await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
    return await consumer.committed(tp)


class _Tasks:
    """The input tasks this worker owns in one transactional loop, and their producers."""

    def __init__(self, settings: Settings, name: str, task_of) -> None:
        self.settings, self.name, self.task_of = settings, name, task_of
        self.producers: dict[str, AIOKafkaProducer] = {}
        self.owned: set[TopicPartition] = set()
        self.moved: set[TopicPartition] = set()  # assigned by the last rebalance and not held before it
        self.done: dict[TopicPartition, int] = {}  # the next offset of each partition this worker committed
        self.generation = 0
        # aiokafka hands out records of new partitions before its on_partitions_assigned callback has
        # finished: a batch waits for the callback (fencing, seeking, a state restore) to finish.
        self.lock = asyncio.Lock()

    async def revoked(self, revoked) -> None:
        async with self.lock:  # the batch in progress finishes and commits first
            pass

    async def assigned(self, consumer: AIOKafkaConsumer, assigned, on_assign) -> None:
        async with self.lock:
            assigned = set(assigned)
            self.moved, self.owned = assigned - self.owned, assigned
            self.generation += 1
            wanted = {self.task_of(tp) for tp in assigned}
            for task in [t for t in self.producers if t not in wanted]:
                await self.producers.pop(task).stop()
            for task in sorted(wanted - set(self.producers)):
                # Starting it fences the task's previous owner and aborts its open transaction ...
                await self.producer(task)
            for tp in sorted(assigned):
                # ... so only now are a moved task's committed offsets final: the new producer's start waits
                # until the previous owner's last transaction is complete, its offsets included (why EOS per
                # task needs no KIP-447 "require stable" offset fetch, which aiokafka lacks). A partition kept
                # through the rebalance restarts where this worker's own last commit left it: the broker may
                # not show that commit yet (its markers are written after the commit returns).
                committed = await _committed(consumer, tp)
                if tp not in self.moved and tp in self.done:
                    committed = max(committed or 0, self.done[tp])
                if committed is not None:  # none yet: the consumer starts at the beginning by itself
                    consumer.seek(tp, committed)
            self.done = {tp: off for tp, off in self.done.items() if tp in assigned and tp not in self.moved}
            log.info("%s: assigned %d partitions (%d new), %d tasks", self.name, len(assigned), len(self.moved),
                     len(wanted))
            if on_assign is not None:
                await on_assign(assigned)

    async def producer(self, task: str) -> AIOKafkaProducer:
        """The task's producer, started (and its previous owner fenced) on first use."""
        if task not in self.producers:
            self.producers[task] = await transactional_producer(self.settings, f"{self.name}-{task}")
        return self.producers[task]

    def split(self, got: dict, generation: int) -> dict[str, dict]:
        """A poll's records by task. After a rebalance since the poll, every record of it is dropped: each
        partition was sought back to its committed offset (an eager rebalance takes every partition away
        and hands back some), so they will be fetched again, once, by whoever owns them now."""
        parts: dict[str, dict] = {}
        if generation != self.generation:
            return parts
        for tp, msgs in got.items():
            if tp not in self.owned:
                continue
            parts.setdefault(self.task_of(tp), {})[tp] = msgs
        return parts

    async def commit(self, task: str, part: dict, handle) -> None:
        """One task's records, outputs and offsets in one transaction of its producer."""
        from aiokafka.errors import ProducerFenced

        producer = await self.producer(task)
        try:
            offsets = {tp: msgs[-1].offset + 1 for tp, msgs in part.items()}
            async with producer.transaction():
                await handle(producer, [m for msgs in part.values() for m in msgs])
                await producer.send_offsets_to_transaction(offsets, group_id(self.settings, self.name))
            self.done.update(offsets)
        except ProducerFenced:
            # Another worker owns the task now and aborted this transaction: its records are that one's.
            log.warning("%s: task %s moved to another worker; its batch was aborted", self.name, task)
            self.producers.pop(task, None)
            self.owned -= set(part)
            await producer.stop()

    async def close(self) -> None:
        for producer in self.producers.values():
            await producer.stop()
        self.producers.clear()
