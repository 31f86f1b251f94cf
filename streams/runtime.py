"""What every agent of one stream worker shares: settings, codec, topics, the serve role's folds, senders."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ConfigError, StoreError, ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.flow.cache import AnswerCacheFold
from selfevolve.flow.feedback import FeedbackFold
from selfevolve.flow.learning import HistoryFold
from selfevolve.flow.router import RouterFold, RouterState
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.embed import Embedder, embedding_dim
from selfevolve.routing import answer_cache
from selfevolve.routing.answer_cache import AnswerCache
from selfevolve.routing.history import History, Record
from selfevolve.wire.codec import Codec
from selfevolve.wire.deadletter import dead_letter
from selfevolve.wire.tenancy import DEFAULT_TENANT, check_tenant
from selfevolve.wire.topics import STAGES, TENANT_STAGES, Topics
from streams.metrics import observe_dead_letter, observe_out

log = logging.getLogger("selfevolve.runtime")
MAX_KEY_BYTES = 256  # of a dead letter's key: the failed record's key, which is as untrusted as its value
ROUTER_SNAPSHOT = "router.json"  # next to the history snapshot
CACHE_SNAPSHOT = "answer_cache.json"
OFFSET_SNAPSHOT = "offset.json"  # the history topic's offset the two snapshots reflect


def infrastructure(error: BaseException) -> bool:
    """Whether an error is the broker's, not the record's: the worker must stop (and redo the record after a
    restart) rather than dead-letter a record that did nothing wrong."""
    from aiokafka.errors import KafkaError

    return isinstance(error, (KafkaError, BrokerError))


def oversized(value: bytes | None, limit: int) -> ValidationError | None:
    """The error for a record value over `limit` bytes (checked before decoding: a compressed batch arrives
    decompressed, so a small batch on the wire can carry a huge record), else None."""
    n = len(value or b"")
    return ValidationError(f"record is {n} bytes, over the {limit}-byte limit") if n > limit else None


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ServeState:
    """The serve role's folds and their states, built once per process. The history topic (every delivery
    and accepted verdict, one partition) is folded into the history fold (the FAISS index, in place) and the
    router fold (its domains) by streams/history_follow.py; `offset` is the next history record to fold."""

    catalogue: Catalogue
    embedder: Embedder
    history: History
    router_fold: RouterFold
    router_state: RouterState
    history_fold: HistoryFold
    cache_fold: AnswerCacheFold
    cache: AnswerCache
    feedback_fold: FeedbackFold = field(default_factory=FeedbackFold)
    offset: int = 0

    @classmethod
    def build(cls, settings: Settings, where: Path | None) -> "ServeState":
        """From the settings and, with `where`, the snapshots saved there (a history, a router state, the
        history topic's offset they reflect)."""
        catalogue = Catalogue.load(settings.catalogue)
        embedder = Embedder(settings)
        history_fold = HistoryFold(embedding_dim(settings))
        history = (History.load(where) if where is not None and (where / "meta.json").exists()
                   else history_fold.initialize())
        if history.dim != history_fold.dim:
            raise ConfigError(f"the routing history in {where} holds {history.dim}-dim vectors but the "
                              f"{settings.embedder!r} embedder makes {history_fold.dim}: set SELFEVOLVE_EMBEDDER "
                              "to the one it was built with, or move the history away to start a new one")
        cache_fold = AnswerCacheFold(settings)
        cache = _cache_snapshot(where, settings) or cache_fold.initialize()
        router_fold = RouterFold(settings, catalogue, history, embedder, cache=cache)
        snapshot = _router_snapshot(where)
        offset = _offset_snapshot(where) if len(history) else 0
        return cls(catalogue=catalogue, embedder=embedder, history=history, router_fold=router_fold,
                   router_state=router_fold.restore(snapshot), history_fold=history_fold, cache_fold=cache_fold,
                   cache=cache, offset=offset)

    def apply(self, event: Event) -> None:
        """Fold one history-topic event: the router learns the domains, the history the delivery or verdict,
        the cache the answer. Both check before they write, so one that raises changed neither. A delivery
        the history already holds (folded again after a snapshot whose offset was older than its history:
        a crash mid-save) changes nothing, so the domains do not count it twice."""
        r = event.record
        tenant = r.get("tenant") or DEFAULT_TENANT
        if r.get("event") == "delivery" and self.known(r.get("query_id", ""), tenant) is not None:
            return
        router_state, _ = self.router_fold.step(self.router_state, event)
        self.history, _ = self.history_fold.step(self.history, event)
        self.router_state = router_state
        self.cache, _ = self.cache_fold.step(self.cache, event)

    def follow(self, event: Event) -> None:
        """A model_event or strategy event reaches the router fold at once (a follower of streams/model_events)."""
        self.router_state, _ = self.router_fold.step(self.router_state, event)

    def known(self, query_id: str, tenant: str) -> Record | None:
        """The history's record of an answered query, if it holds one (for reuse and ownership checks)."""
        return self.history.get(query_id, tenant)

    def digest(self) -> str:
        """A fingerprint of what this replica decides on: the history's records, vectors and predictor, the
        router's domains, thresholds and hierarchy, and the offset. Replicas that folded the same history
        topic have the same digest (the replication tests compare workers by it)."""
        h = hashlib.sha256()
        for record in self.history.records:
            h.update(json.dumps(vars(record), sort_keys=True).encode())
        if self.history.index.ntotal:
            h.update(np.ascontiguousarray(self.history.index.reconstruct_n(0, self.history.index.ntotal)).tobytes())
        for name, value in sorted(self.history.predictor.to_state().items()):
            h.update(name.encode() + np.ascontiguousarray(value).tobytes())
        h.update(json.dumps(self.router_state.to_json(), sort_keys=True).encode())
        h.update(json.dumps(self.cache.to_json(), sort_keys=True).encode())
        h.update(str(self.offset).encode())
        return h.hexdigest()

    def save(self, where: Path) -> None:
        """Snapshot the history, the router state and the history offset they reflect, offset last: a crash
        mid-save leaves an older offset, and folding a delivery twice keeps the first."""
        where.mkdir(parents=True, exist_ok=True)
        self.history.save(where)
        (where / ROUTER_SNAPSHOT).write_text(json.dumps(self.router_state.to_json()))
        (where / CACHE_SNAPSHOT).write_text(json.dumps(self.cache.to_json()))
        (where / OFFSET_SNAPSHOT).write_text(json.dumps({"offset": self.offset}))


def _cache_snapshot(where: Path | None, settings: Settings) -> AnswerCache | None:
    path = where / CACHE_SNAPSHOT if where is not None else None
    if path is None or not path.exists():
        return None
    try:
        return answer_cache.from_settings(settings, json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the answer cache snapshot {path}") from e


def _offset_snapshot(where: Path | None) -> int:
    path = where / OFFSET_SNAPSHOT if where is not None else None
    if path is None or not path.exists():
        return 0
    try:
        return int(json.loads(path.read_text())["offset"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"cannot read the history offset snapshot {path}") from e


def _router_snapshot(where: Path | None) -> dict | None:
    """The saved router state, or the domains.json a worker saved before the router was a fold."""
    for name in (ROUTER_SNAPSHOT, "domains.json"):
        path = where / name if where is not None else None
        if path is not None and path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise StoreError(f"cannot read the router snapshot {path}") from e
    return None


def _set(event: asyncio.Event) -> asyncio.Event:
    event.set()  # nothing to wait for unless a follower registers (streams/model_events.py)
    return event


@dataclass
class Runtime:
    """Built once per worker process and passed to each agent's `register(app, rt)`. `through()` copies it:
    the serve state, the followers and the store are shared by reference; sink_skipped is a plain count of
    the runtime the sink was given."""

    settings: Settings
    codec: Codec
    topics: Topics
    app: Any = None
    serve: ServeState | None = None  # the serve role's folds: built by serving(), serve role only
    # Called with each decoded model_event / strategy Event (streams/model_events.py, both roles).
    followers: list[Callable[[Event], None]] = field(default_factory=list)
    store: Any = None  # history role: the ClickHouse store, set by the sink
    sink_skipped: int = 0  # history role: records the sink could not read or store
    # Set once the model-events and strategy topics were replayed through the followers at start-up
    # (streams/model_events.py clears it when it registers): until then a fold would decide on a hierarchy
    # and thresholds older than the topics', and decide again what was decided before the restart.
    recovered: asyncio.Event = field(default_factory=lambda: _set(asyncio.Event()), repr=False)
    # Serve role: folds the history topic into the serve state (streams/history_follow.py).
    history_follower: Any = None
    # "topic:partition" -> the next offset the evolution followers fold (group-less: shown on /replica).
    followed: dict[str, int] = field(default_factory=dict)
    _topics: dict[str, Any] = field(default_factory=dict)  # Faust topic objects, built once per name
    producer: Any = None  # an aiokafka producer to send through instead of Faust's (a task's transactions)
    # Only the serve role learns a routing history and snapshots it; the history role must not read the
    # snapshot, which the serve worker may be rewriting at that moment.
    owns_history: bool = True
    # serving()'s lock (two tasks may build it at once, each in a thread) and the one ServeState, shared with
    # every through() copy, even one made before the state was built.
    _building: Any = field(default_factory=threading.Lock, repr=False)
    _built: list = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, settings: Settings, owns_history: bool = True) -> "Runtime":
        return cls(settings=settings, codec=Codec.from_dir(), topics=Topics.from_settings(settings),
                   owns_history=owns_history)

    def through(self, producer) -> "Runtime":
        """This runtime, sending through producer (shares settings, codec, the serve state and followers)."""
        return replace(self, producer=producer, _topics={})

    async def replicated(self) -> ServeState:
        """The serve state once it is fit to decide on: built (off the loop), the model-events and strategy
        topics replayed, and the history topic folded up to where it stood at start."""
        serve = await asyncio.to_thread(self.serving)
        await self.recovered.wait()
        if self.history_follower is not None:
            await self.history_follower.ready.wait()
        return serve

    def serving(self) -> ServeState:
        """The serve role's folds, built on first use (loading the history snapshot takes a while; call it
        off the event loop). The history role gets a fresh state: it must not read the serve worker's
        snapshot."""
        if self.serve is not None:
            return self.serve
        with self._building:
            if not self._built:
                self._built.append(ServeState.build(self.settings, self.history_dir if self.owns_history else None))
            self.serve = self._built[0]
            return self.serve

    def save(self) -> None:
        """Snapshot what the router learnt (history and router state) so a restart starts from it."""
        if self.owns_history and (self.serve is not None or self._built):
            self.serving().save(self.history_dir)

    @property
    def history_dir(self):
        """This serve worker's snapshot folder: one per worker index, as workers on one host share a home."""
        return self.settings.home / "history" / str(self.settings.serve_worker)

    def topic(self, name: str, *more: str):
        """A raw-bytes Faust topic: agents decode themselves so bad bytes reach dead-letter."""
        return self.app.topic(name, *more, key_serializer="raw", value_serializer="raw",
                              partitions=self.settings.topic_partitions)

    async def send(self, topic: str, kind: str, record: dict, key: str | None):
        """Queue a record; returns the future of the broker's acknowledgement, for callers that must wait."""
        return await self.send_raw(topic, key.encode() if key is not None else None,
                                   self.codec.encode(kind, record))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None):
        """Queue raw bytes (None: a tombstone), to a given partition or by key; returns the ack future."""
        if self.producer is not None:
            return await self.producer.send(topic, value=value, key=key, partition=partition)
        if topic not in self._topics:
            self._topics[topic] = self.app.topic(topic, key_serializer="raw", value_serializer="raw")
        return await self._topics[topic].send(key=key, value=value, partition=partition)

    async def send_out(self, out: Out):
        """Queue a fold's output on the topic of its stage; returns the ack future."""
        topic = self.topic_of(out)
        observe_out(out)  # counted once queued: an aborted transaction's redo counts again (metrics are rates)
        return await self.send(topic, out.kind, out.record, out.key)

    def topic_of(self, out: Out) -> str:
        """The topic of an output's stage: a stage of topics.STAGES, `inference-requests.<backend>` or
        `<tenant stage>.<tenant>`; one whose kind is not what that topic carries is refused."""
        base, dot, rest = out.stage.partition(".")
        if STAGES.get(base) != out.kind:
            raise ConfigError(f"a {out.kind} output cannot go to stage {out.stage!r}")
        if not dot:
            return f"{self.topics.prefix}{base}"
        if base == "inference-requests":
            return self.topics.requests_for(rest)
        if base in TENANT_STAGES:
            return f"{self.topics.prefix}{base}.{check_tenant(rest)}"
        raise ConfigError(f"stage {out.stage!r} has no per-backend or per-tenant topics")

    async def publish(self, topic: str, kind: str, record: dict, key: str | None) -> None:
        """Send and wait for the broker's acknowledgement. Faust acks the input event when the agent moves
        on, and commits acked offsets on a timer: an output still in the producer's buffer at a crash
        would be lost with its input counted as done."""
        await (await self.send(topic, kind, record, key))

    async def records(self, stream, kind: str):
        """Decoded records of `kind` from a raw stream; undecodable events go to dead-letter instead."""
        async for record, _ in self.records_at(stream, kind):
            yield record

    async def records_at(self, stream, kind: str):
        """(record, (partition, offset)) pairs, for agents that fold each source event exactly once."""
        async for event, record, at in self._decoded(stream, kind):
            yield record, at

    async def _decoded(self, stream, kind: str):
        async for event in stream.events():
            try:
                record = self.codec.decode(kind, event.value)
            except Exception as e:  # noqa: BLE001 - any failure to read one record is that record's
                await self.dead_letter(event, e)
                continue
            yield event, record, (event.message.partition, event.message.offset)

    async def each(self, stream, kind: str, handle) -> None:
        """`await handle(record, (partition, offset))` for each decoded record of a raw stream; a record that
        cannot be decoded, or whose handling raises, is dead-lettered with the reason and the stream goes on.
        Broker errors are not the record's fault: they stop the agent (the record is redelivered)."""
        async for event, record, at in self._decoded(stream, kind):
            try:
                await handle(record, at)
            except Exception as e:  # noqa: BLE001 - one poison record must not stop the stream
                if infrastructure(e):
                    raise
                log.exception("dead-lettering %s record at %s: its handling failed", kind, at)
                await self.dead_letter(event, e)

    async def dead_letter(self, event, error: BaseException) -> None:
        await self.dead_letter_message(event.message, error)

    async def dead_letter_message(self, msg, error: BaseException) -> None:
        """Dead-letter a raw message (a Faust message or an aiokafka record) with the reason; waits for the ack."""
        await (await self.send_dead_letter(msg, error))

    async def send_dead_letter(self, msg, error: BaseException):
        """Queue the dead letter of a raw message; returns the ack future."""
        record = dead_letter(msg.topic, msg.partition, msg.offset, msg.value or b"", error, now_ms(),
                             max_payload=self.settings.dead_letter_payload_bytes)
        key = bytes(msg.key[:MAX_KEY_BYTES]).decode("utf-8", "replace") if msg.key else None
        observe_dead_letter(error)
        return await self.send(self.topics.dead_letter, "dead_letter", record, key=key)
