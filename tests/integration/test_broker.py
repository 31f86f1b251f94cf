"""The local KRaft broker serves aiokafka and faust-streaming: groups, commits, idempotence, transactions, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.kafka.launcher import KafkaBroker

pytestmark = pytest.mark.integration


async def create_topic(broker: KafkaBroker, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap, **broker.admin_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(broker: KafkaBroker, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, **broker.admin_options())
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v)
    finally:
        await producer.stop()


async def consume(broker: KafkaBroker, topic: str, n: int, group: str | None = None, timeout: float = 30,
                  **kw: object):
    """Read exactly n records (failing on timeout); commit them when a group is given."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, **broker.admin_options(), group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False, **kw,
    )  # fmt: skip
    await consumer.start()
    try:
        records = [await asyncio.wait_for(consumer.getone(), timeout) for _ in range(n)]
        if group is not None:
            await consumer.commit()
        return records
    finally:
        await consumer.stop()


def test_round_trip_then_group_resumes_from_committed_offset(kafka_broker: KafkaBroker, topic_prefix: str) -> None:
    topic, group = f"{topic_prefix}orders", f"{topic_prefix}g"
    values = [f"m{i}".encode() for i in range(20)]

    async def run() -> None:
        await create_topic(kafka_broker, topic)
        await produce(kafka_broker, topic, values)
        first = await consume(kafka_broker, topic, 12, group)
        assert [r.value for r in first] == values[:12]
        # A new consumer in the same group must start at the commit, not at the beginning.
        rest = await consume(kafka_broker, topic, 8, group)
        assert [r.offset for r in rest] == list(range(12, 20))
        assert [r.value for r in rest] == values[12:]

        probe = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, **kafka_broker.admin_options(),
                                 group_id=group, enable_auto_commit=False)
        await probe.start()
        try:
            assert await probe.committed(TopicPartition(topic, 0)) == 20
        finally:
            await probe.stop()

    asyncio.run(run())


def test_admin_created_topic_has_its_partitions(kafka_broker: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}wide"

    async def run() -> set[int]:
        await create_topic(kafka_broker, topic, partitions=3)
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, **kafka_broker.admin_options())
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            return consumer.partitions_for_topic(topic) or set()
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == {0, 1, 2}


def test_idempotent_producer_gets_a_producer_id_and_writes_once(kafka_broker: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}idem"
    values = [f"v{i}".encode() for i in range(50)]

    async def run() -> None:
        await create_topic(kafka_broker, topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **kafka_broker.admin_options(),
                                    enable_idempotence=True, acks="all")
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, v) for v in values])
            # The broker granted InitProducerId: without it idempotence silently is off.
            assert producer._txn_manager is not None and producer._txn_manager.producer_id >= 0
        finally:
            await producer.stop()
        # Exactly the 50 records in order: no duplicates from retries, nothing lost.
        got = await consume_all(kafka_broker, topic)
        assert [r.value for r in got] == values

    asyncio.run(run())


async def consume_all(broker: KafkaBroker, topic: str, **kw: object) -> list:
    """Everything in a one-partition topic up to its current end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                                **broker.admin_options(), **kw)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out, deadline = [], time.monotonic() + 30
        while await consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"stuck below end offset {end} of {topic}"
            batch = await consumer.getmany(tp, timeout_ms=1000)
            out.extend(batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


def test_transactions_hide_aborted_records_from_read_committed(kafka_broker: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}tx"

    async def run() -> None:
        await create_topic(kafka_broker, topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **kafka_broker.admin_options(),
                                    transactional_id=f"{topic_prefix}txid")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, b"kept")
            await producer.begin_transaction()
            await producer.send(topic, b"dropped")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, b"kept2")
        finally:
            await producer.stop()
        committed = await consume_all(kafka_broker, topic, isolation_level="read_committed")
        uncommitted = await consume_all(kafka_broker, topic, isolation_level="read_uncommitted")
        assert [r.value for r in committed] == [b"kept", b"kept2"]
        assert [r.value for r in uncommitted] == [b"kept", b"dropped", b"kept2"]

    asyncio.run(run())


def test_restarted_broker_keeps_records_and_committed_offsets(new_broker: Callable[[], KafkaBroker]) -> None:
    broker = new_broker()
    t0 = time.monotonic()
    broker.start()
    cold = time.monotonic() - t0
    meta = (broker.log_dir / "meta.properties").read_text()
    topic, group = "keep.me", "keeper"

    async def before() -> None:
        await create_topic(broker, topic)
        await produce(broker, topic, [b"a", b"b", b"c"])
        await consume(broker, topic, 2, group)

    asyncio.run(before())
    broker.stop()
    assert not broker.is_running() and not broker.pid_file.exists()

    t0 = time.monotonic()
    broker.start()
    warm = time.monotonic() - t0
    assert broker.is_running()
    # Same cluster id: format() must not wipe a formatted data dir.
    assert (broker.log_dir / "meta.properties").read_text() == meta

    async def after() -> None:
        rest = await consume(broker, topic, 1, group)
        assert [(r.offset, r.value) for r in rest] == [(2, b"c")]
        everything = await consume(broker, topic, 3)
        assert [r.value for r in everything] == [b"a", b"b", b"c"]

    asyncio.run(after())
    broker.stop()
    print(f"broker start: cold {cold:.1f}s, restart {warm:.1f}s")


FAUST_APP = """
    import faust

    # The session broker runs with SASL/SCRAM: the worker signs in as the admin (read from its 0600 file).
    credentials = faust.SASLCredentials(username="admin", password=open({password_file!r}).read().strip(),
                                        mechanism="SCRAM-SHA-512")
    app = faust.App(
        {app_id!r}, broker={broker!r}, store="memory://", datadir={datadir!r}, web_enabled=False,
        processing_guarantee={guarantee!r}, broker_credentials=credentials,
    )
    # internal=True makes the worker create these topics itself at start.
    source = app.topic({src!r}, value_serializer="raw", partitions=1, internal=True)
    sink = app.topic({dst!r}, value_serializer="raw", partitions=1, internal=True)

    @app.agent(source)
    async def shout(stream):
        async for value in stream:
            await sink.send(value=value.upper())

    if __name__ == "__main__":
        app.main()
"""


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_faust_worker_consumes_and_produces(
    kafka_broker: KafkaBroker, topic_prefix: str, tmp_path: Path, guarantee: str
) -> None:
    src, dst = f"{topic_prefix}in", f"{topic_prefix}out"
    script = tmp_path / "shout_app.py"
    script.write_text(textwrap.dedent(FAUST_APP).format(
        app_id=f"{topic_prefix}shout", broker=f"kafka://{kafka_broker.bootstrap}", datadir=str(tmp_path / "faust"),
        src=src, dst=dst, guarantee=guarantee, password_file=str(kafka_broker.admin_password_file),
    ))  # fmt: skip
    log = tmp_path / "worker.log"
    # The worker CLI ignores web_enabled=False unless told --without-web (it would bind 0.0.0.0:6066).
    cmd = [sys.executable, str(script), "worker", "--without-web", "-l", "info", "-f", str(log)]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, start_new_session=True)
    values = [f"hello {i}".encode() for i in range(5)]

    async def run() -> list[bytes]:
        deadline = time.monotonic() + 60
        while "Worker]: Ready" not in (log.read_text() if log.exists() else ""):
            assert worker.poll() is None, f"faust worker died:\n{log.read_text() if log.exists() else ''}"
            assert time.monotonic() < deadline, "faust worker not ready in 60 s"
            await asyncio.sleep(0.2)
        await produce(kafka_broker, src, values)
        # read_committed: with exactly_once the output only shows once Faust commits its transaction.
        got = await consume(kafka_broker, dst, len(values), timeout=60, isolation_level="read_committed")
        return [r.value for r in got]

    try:
        got = asyncio.run(run())
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert got == [v.upper() for v in values]
