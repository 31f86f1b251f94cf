"""A key/value table backed by a compacted changelog topic, for a task that reads with its own consumer.

What a Faust table gives an agent, for a consumer that commits by hand: the table's partitions follow the
input partitions (a key lives in the partition number of the input that wrote it), a newly assigned
partition is read back from its changelog (restore, then take) before any input is read, and writes are
staged and reach the changelog only when the owner calls flush(), which it does after that batch's
outputs are acknowledged and before it commits the batch's offsets. The live values are the owner's (the
scorer fold's state): the table holds only what a restore read, until the owner takes it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.flow.scorer import CHANGELOG_RECORD_OVERHEAD
from streams.kafka_io import client_options

log = logging.getLogger("selfevolve.changelog")

# (topic, key, value or None for a tombstone, partition) -> the broker's acknowledgement
Send = Callable[[str, bytes, bytes | None, int], Awaitable[Awaitable[Any]]]


class ChangelogTable:
    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.topic = f"{settings.topic_prefix}{name}-changelog"
        self.data: dict[int, dict[str, Any]] = {}  # partition -> key -> value, as restore() read them
        self.pending: dict[tuple[int, str], bytes | None] = {}  # staged encoded writes, the latest per key

    def put(self, partition: int, key: str, value: Any) -> None:
        """Durable after the next flush(). A value whose record would exceed what the broker accepts raises
        ValidationError and stages nothing: flushing it would fail the whole batch on every retry (the scorer
        fold refuses such a log before it keeps it; this is the last guard)."""
        encoded = json.dumps(value).encode()
        limit = self.settings.kafka_max_message_bytes - CHANGELOG_RECORD_OVERHEAD - len(key.encode())
        if len(encoded) > limit:
            raise ValidationError(f"{self.topic} value for {key[:100]!r} would be {len(encoded)} bytes, over the "
                                  f"{limit}-byte record limit")
        self.pending[(partition, key)] = encoded

    def delete(self, partition: int, key: str) -> None:
        """The next flush() writes a tombstone, which compaction then removes with the key."""
        self.pending[(partition, key)] = None

    def take(self, partition: int) -> dict[str, Any]:
        """What restore() read of a partition, key -> value in the order last written; the table forgets it."""
        return self.data.pop(partition, {})

    async def flush(self, send: Send, partitions: set[int] | None = None) -> None:
        """Write the staged values (of `partitions` only, if given: each task's transaction writes its own)
        and wait for the broker to hold all of them."""
        if partitions is None:
            staged, self.pending = self.pending, {}
        else:
            staged = {k: v for k, v in list(self.pending.items()) if k[0] in partitions}
            for k in staged:
                self.pending.pop(k, None)
        acks = [await send(self.topic, key.encode(), value, partition) for (partition, key), value in staged.items()]
        for ack in acks:
            await ack

    def drop(self, partitions: set[int]) -> None:
        """Forget partitions this worker no longer owns (a rebalance gave them to another): their restored
        values and their staged writes."""
        for p in partitions:
            self.data.pop(p, None)
        self.pending = {k: v for k, v in self.pending.items() if k[0] not in partitions}

    async def restore(self, partitions: set[int]) -> int:
        """Rebuild the given partitions from the start of their changelog; returns the records read."""
        if not partitions:
            return 0
        # read_committed: writes of a transaction a crash aborted never happened.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed", **client_options(self.settings))
        await consumer.start()
        read = 0
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            for tp in tps:
                self.data[tp.partition] = {}
            todo = {tp for tp in tps if end[tp] > 0}
            while todo:
                for tp, msgs in (await consumer.getmany(*todo, timeout_ms=1000)).items():
                    for m in msgs:
                        key = m.key.decode()
                        # Popped first: a rewritten key moves to the end, so the order is the last writes'.
                        self.data[tp.partition].pop(key, None)
                        if m.value is not None:
                            self.data[tp.partition][key] = json.loads(m.value)
                        read += 1
                for tp in list(todo):
                    if await consumer.position(tp) >= end[tp]:
                        todo.discard(tp)
        finally:
            await consumer.stop()
        log.info("restored %s partitions %s from %d changelog records", self.topic, sorted(partitions), read)
        return read
