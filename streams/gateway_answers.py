"""The gateway's view of Kafka: it sends queries and verdicts to tenants' topics and reads their answers back.

One group-less consumer reads every partition of answers.<T> for each tenant that has a key, from
`gateway_lookback_s` ago (offsets by time) and then as they come. From that one stream the gateway:
- wakes the request waiting on an answer, correlated by (tenant, query id);
- keeps the recent answers (bounded), so a client's retry with the same idempotency key is answered from
  them, also when the first try's gateway died before the answer came back (a new gateway reads them back
  on start);
- charges each answer's cost to the key its query id names (SpendLedger): every gateway reads the same
  topics, so every gateway computes the same spend, without a shared store or coordination.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from aiokafka import AIOKafkaConsumer, TopicPartition

from selfevolve.config import Settings
from selfevolve.wire.apikeys import SpendLedger
from selfevolve.wire.codec import Codec
from selfevolve.wire.tenancy import check_tenant, query_key
from selfevolve.wire.topics import Topics
from streams.kafka_io import client_options, partitions_of, producer

log = logging.getLogger("selfevolve.gateway")


class AnswerBook:
    """Answers by (tenant, query id): the recent ones, the waiters, and the spend per key and day."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.codec, self.topics = settings, Codec.from_dir(), Topics.from_settings(settings)
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.waiters: dict[str, list[asyncio.Future]] = {}
        self.ledger = SpendLedger()
        self.tenants: set[str] = set()
        self.ready = asyncio.Event()  # set once the look-back up to the start's end offsets is read
        self.skipped = 0
        self._want: set[str] = set()
        self._catch_up: dict[TopicPartition, int] = {}  # end offsets at assignment, until read
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = None
        self._task: asyncio.Task | None = None

    async def start(self, tenants: list[str]) -> None:
        self._producer = producer(self.settings, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                          isolation_level="read_committed", client_id="selfevolve-gateway",
                                          auto_offset_reset="earliest", **client_options(self.settings))
        await self._consumer.start()
        await self._assign(set(tenants))
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    def want_tenants(self, tenants: list[str]) -> None:
        """Follow these tenants' answers too (new keys); the reader picks them up between polls."""
        self._want |= set(tenants) - self.tenants

    async def _assign(self, tenants: set[str]) -> None:
        """Read answers.<T> of `tenants` too: old partitions keep their positions, new ones start at the look-back."""
        c = self._consumer
        old = {tp: await c.position(tp) for tp in c.assignment()}
        new: list[TopicPartition] = []
        for t in sorted(tenants - self.tenants):
            topic = self.topics.answers_for(check_tenant(t))
            parts = await partitions_of(self.settings, topic)
            if not parts:
                log.warning("no topic %s (run `selfevolve tenants add %s`): its answers cannot be read", topic, t)
                continue
            new += [TopicPartition(topic, p) for p in parts]
            self.tenants.add(t)
        if not new:
            if not self.ready.is_set() and not old:
                self.ready.set()
            return
        c.assign(list(old) + new)
        for tp, pos in old.items():
            c.seek(tp, pos)
        since = int((time.time() - self.settings.gateway_lookback_s) * 1000)
        found = await c.offsets_for_times({tp: since for tp in new})
        ends = await c.end_offsets(new)
        for tp in new:
            hit = found.get(tp)
            c.seek(tp, hit.offset if hit is not None else ends[tp])
        for tp in new:
            hit = found.get(tp)
            if hit is not None and ends[tp] > hit.offset:
                self._catch_up[tp] = ends[tp]
        if not self._catch_up:
            self.ready.set()

    async def _read(self) -> None:
        """Read answers until cancelled. A failed poll is logged and tried again: if this task ended, every
        later request of every tenant would wait for its timeout."""
        while True:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - logged; the next poll tries again
                log.exception("reading answers failed; trying again in 1 s")
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        c = self._consumer
        if self._want:
            want, self._want = self._want, set()
            await self._assign(want | self.tenants)
        if not c.assignment():
            # No tenant yet (a gateway started before its first key): aiokafka refuses to poll a consumer
            # with nothing assigned, and that error used to end this task for good.
            await asyncio.sleep(0.1)
            return
        batches = await c.getmany(timeout_ms=100, max_records=1000)
        for msgs in batches.values():
            for m in msgs:
                self._take(m.value)
        # Caught up with a partition once past the end it had at assignment (transaction markers take
        # offsets too, so the position, not the last record, tells); an empty poll means nothing is left.
        for tp, end in list(self._catch_up.items()):
            if not batches or await c.position(tp) >= end:
                del self._catch_up[tp]
        if not self.ready.is_set() and not self._catch_up:
            self.ready.set()

    def _take(self, value: bytes) -> None:
        try:
            ans = self.codec.decode("answer", value)
        except Exception:  # noqa: BLE001 - a record that is not an answer is skipped and counted
            self.skipped += 1
            return
        key = query_key(ans["tenant"], ans["query_id"])
        self.ledger.add(ans["tenant"], ans["query_id"], ans["cost_usd"], ans["ts_ms"])
        if key in self.recent:
            return  # at-least-once upstream: the first answer of a query is its answer
        self.recent[key] = ans
        while len(self.recent) > self.settings.gateway_recent_answers:
            self.recent.popitem(last=False)
        for fut in self.waiters.pop(key, []):
            if not fut.done():
                fut.set_result(ans)

    def known(self, tenant: str, qid: str) -> dict | None:
        return self.recent.get(query_key(tenant, qid))

    def pending(self, tenant: str, qid: str) -> bool:
        """Whether a request of this gateway already waits on this query (a retry must not send it again)."""
        return bool(self.waiters.get(query_key(tenant, qid)))

    def waiter(self, tenant: str, qid: str) -> asyncio.Future:
        """A future resolved by the query's answer; made before the query is sent, so no answer is missed."""
        fut = asyncio.get_running_loop().create_future()
        key = query_key(tenant, qid)
        if key in self.recent:
            fut.set_result(self.recent[key])
        else:
            self.waiters.setdefault(key, []).append(fut)
        return fut

    def forget(self, tenant: str, qid: str, fut: asyncio.Future) -> None:
        key = query_key(tenant, qid)
        left = [f for f in self.waiters.get(key, []) if f is not fut]
        if left:
            self.waiters[key] = left
        else:
            self.waiters.pop(key, None)

    async def send(self, kind: str, topic: str, key: str, record: dict) -> None:
        """Encode and send one record, returning once the broker has it (acks=all): a query the gateway
        acknowledged to no one may be lost with the gateway, one it waits on is on the broker."""
        await self._producer.send_and_wait(topic, key=key.encode(), value=self.codec.encode(kind, record))
