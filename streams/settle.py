"""Wait until the pipeline is quiescent: every consumer group has consumed every record of the topics it reads.

Used to run the Kafka pipeline one step at a time (a query, its answer, its feedback, and whatever
evolution follows), so that its decisions can be compared with the in-memory driver's
(tests/integration/test_driver_equivalence.py). A group is caught up on a partition when no committed
data record lies between its committed offset and the end: transaction markers occupy offsets too, so
comparing the two numbers is not enough, and a read_committed probe reads what lies between.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from selfevolve.config import Settings
from selfevolve.errors import BrokerError
from streams.kafka_io import client_options


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


class Settler:
    """A probe over {group id: [topic, ...]}: `await settle()` returns once every group is caught up on every
    partition of its topics, twice in a row (one group's processing writes another's input)."""

    def __init__(self, settings: Settings, expected: dict[str, list[str]], replicas: list[str] = ()) -> None:
        """replicas: /replica URLs of serve workers, whose group-less followers (the history topic, model
        events, strategy) must have read everything too."""
        self.settings, self.expected, self.replicas = settings, expected, list(replicas)
        self.admin: AIOKafkaAdminClient | None = None
        self.probe: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> "Settler":
        opts = client_options(self.settings)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, **opts)
        self.probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                      isolation_level="read_committed", **opts)
        await self.admin.start()
        await self.probe.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.probe.stop()
        await self.admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        parts = self.probe.partitions_for_topic(topic)
        if parts is None:
            await self.probe._client.force_metadata_update()  # a topic created after the probe started
            parts = self.probe.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(parts)]

    async def lagging(self) -> list[str]:
        """'group topic[partition]' for every partition with a committed record its group has not consumed."""
        out = []
        for group, topics in self.expected.items():
            committed = await self.admin.list_consumer_group_offsets(group)
            tps = [tp for t in topics for tp in await self._partitions(t)]
            if not tps:
                continue
            ends = await self.probe.end_offsets(tps)
            for tp in tps:
                meta = committed.get(tp)
                start = meta.offset if meta is not None and meta.offset >= 0 else 0
                if start < ends[tp] and await self._records_between(tp, start, ends[tp]):
                    out.append(f"{group} {tp.topic}[{tp.partition}]")
        for url in self.replicas:
            out += await self._replica_lag(url)
        return out

    async def _replica_lag(self, url: str) -> list[str]:
        """'url topic[partition]' for every followed partition with a committed record the replica has not read."""
        seen = await asyncio.to_thread(_get_json, url)
        if seen is None:
            return [f"{url} unreachable"]
        p = self.settings.topic_prefix
        positions = {f"{p}history:0": int(seen.get("offset", 0)), **(seen.get("followed") or {})}
        tps = [tp for t in (p + "history", p + "model-events", p + "strategy") for tp in await self._partitions(t)]
        ends = await self.probe.end_offsets(tps) if tps else {}
        out = []
        for tp in tps:
            start = positions.get(f"{tp.topic}:{tp.partition}", 0)
            if start < ends[tp] and await self._records_between(tp, start, ends[tp]):
                out.append(f"{url} {tp.topic}[{tp.partition}]")
        return out

    async def _records_between(self, tp: TopicPartition, start: int, end: int) -> bool:
        """Whether a committed data record lies in [start, end) (markers and aborted records do not count)."""
        self.probe.assign([tp])
        self.probe.seek(tp, start)
        deadline = time.monotonic() + 5.0
        while await self.probe.position(tp) < end and time.monotonic() < deadline:
            got = await self.probe.getmany(tp, timeout_ms=200)
            if any(got.values()):
                return True
        return False

    async def settle(self, timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        deadline, quiet = time.monotonic() + timeout_s, 0
        lag: list[str] = []
        while quiet < 2:
            lag = await self.lagging()
            quiet = 0 if lag else quiet + 1
            if time.monotonic() > deadline:
                raise BrokerError(f"pipeline not quiescent after {timeout_s:.0f} s: {lag[:6]}")
            await asyncio.sleep(poll_s)
