"""History follower: each serve worker folds the one-partition history topic into its own routing history.

The GlobalKTable pattern: every serve worker reads every record of `<prefix>history` (no consumer group,
read_committed: a delivery is there once its answer's transaction committed) in the topic's one order, so
all replicas hold the same history and domains and any worker can route any query alike. A worker starts
from its snapshot (home/history/<serve_worker>: the history, the router state and the offset they reflect)
and folds the topic's tail; its router, scorer and feedback wait until it has folded what the topic held at
start (a late joiner catches up before it routes). It snapshots every history_snapshot_every records.

A record no fold accepts (a forged or damaged one: serve workers write this topic only inside their
transactions) is skipped and logged, by every replica alike, so the replicas stay equal; it was never the
answer path's, so it gets no dead letter here (N workers would write N).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from selfevolve.flow.events import Event
from streams.kafka_io import client_options, ensure_topics
from streams.runtime import infrastructure

log = logging.getLogger("selfevolve.history")


class HistoryFollower:
    """Folds the history topic into rt's serve state; `ready` is set once the start-up tail is folded."""

    def __init__(self, rt) -> None:
        self.rt = rt
        self.ready = asyncio.Event()
        # Records folded and skipped since start (the worker's /replica page): skipped records get no dead
        # letter, so these counts are where a hostile record on the topic shows.
        self.folded = self.skipped = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.tp = TopicPartition(rt.topics.history, 0)
        self._since_save = 0

    async def start(self) -> None:
        s = self.rt.settings
        await ensure_topics(s, [self.rt.topics.history])
        serve = await asyncio.to_thread(self.rt.serving)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                         isolation_level="read_committed", **client_options(s))
        await self.consumer.start()
        self.consumer.assign([self.tp])
        self.consumer.seek(self.tp, serve.offset)

    async def end(self) -> int:
        """The history topic's last stable offset now: every committed delivery lies before it."""
        return (await self.consumer.end_offsets([self.tp]))[self.tp]

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fold the topic until cancelled (or `stop` is set), snapshotting as it goes and when it stops."""
        await self.start()
        try:
            start_end = await self.end()
            while stop is None or not stop.is_set():
                got = await self.consumer.getmany(self.tp, timeout_ms=200, max_records=2000)
                for msg in got.get(self.tp, ()):
                    self.fold(msg)
                if not self.ready.is_set() and await self.consumer.position(self.tp) >= start_end:
                    log.info("history replica caught up at offset %d (%d records)", self.rt.serve.offset,
                             len(self.rt.serve.history))
                    self.ready.set()
                if self._since_save >= self.rt.settings.history_snapshot_every:
                    self.rt.save()
                    self._since_save = 0
        finally:
            if self._since_save:
                self.rt.save()
            await self.consumer.stop()

    def fold(self, msg) -> None:
        """Fold one history record into the serve state; one that cannot be read or folded is skipped."""
        serve = self.rt.serve
        try:
            record = self.rt.codec.decode("history", msg.value)
            serve.apply(Event("history", record, msg.topic, (msg.partition, msg.offset)))
            self.folded += 1
        except Exception as e:  # noqa: BLE001 - skipped alike by every replica (module docstring)
            if infrastructure(e):
                raise
            self.skipped += 1
            log.warning("skipping history record at offset %d: %s", msg.offset, e)
        serve.offset = msg.offset + 1
        self._since_save += 1

    async def sync(self, timeout_s: float = 5.0) -> bool:
        """Wait until this replica has folded every record committed before now (a client that has read an
        answer may send its verdict to a worker whose replica has not folded that delivery yet); False if
        it did not within timeout_s."""
        target = await self.end()
        deadline = time.monotonic() + timeout_s
        while self.rt.serve.offset < target and await self.consumer.position(self.tp) < target:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True


def register(app, rt) -> None:
    follower = HistoryFollower(rt)
    rt.history_follower = follower

    @app.task
    async def history_follower():
        await follower.run()
