"""What every agent of one stream worker shares: settings, codec, topics, core state, producer helpers."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.wire.deadletter import dead_letter
from selfevolve.errors import BrokerError, ValidationError
from selfevolve.wire.topics import Topics

log = logging.getLogger("selfevolve.runtime")
MAX_KEY_BYTES = 256  # of a dead letter's key: the failed record's key, which is as untrusted as its value


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
class Runtime:
    """Built once per worker process and passed to each agent's `register(app, rt)`."""

    settings: Settings
    codec: Codec
    topics: Topics
    app: Any = None
    core: dict[str, Any] = field(default_factory=dict)
    _topics: dict[str, Any] = field(default_factory=dict)  # Faust topic objects, built once per name
    producer: Any = None  # an aiokafka producer to send through instead of Faust's (a task's transactions)
    # Only the serve role learns a routing history and snapshots it; the history role must not read the
    # snapshot, which the serve worker may be rewriting at that moment.
    owns_history: bool = True

    @classmethod
    def build(cls, settings: Settings, owns_history: bool = True) -> "Runtime":
        return cls(settings=settings, codec=Codec.from_dir(), topics=Topics.from_settings(settings),
                   owns_history=owns_history)

    def through(self, producer) -> "Runtime":
        """This runtime, sending through producer (shares settings, codec and core state)."""
        return replace(self, producer=producer, _topics={})

    def routing(self) -> dict[str, Any]:
        """The shared routing core, built on first use: catalogue, history (reloaded), embedder, router."""
        if "router" not in self.core:
            from selfevolve.models.catalogue import Catalogue
            from selfevolve.routing.embed import Embedder
            from selfevolve.routing.history import History
            from selfevolve.routing import Router

            catalogue = Catalogue.load(self.settings.catalogue)
            where = self.history_dir
            history = History.load(where) if self.owns_history and (where / "meta.json").exists() else History()
            embedder = Embedder(self.settings)
            from selfevolve.routing import domains
            from selfevolve.evolution import hierarchy

            saved = where / "domains.json"
            dom = (json.loads(saved.read_text()) if self.owns_history and saved.exists()
                   else domains.initialize(self.settings.domain_radius, self.settings.max_domains))
            self.core.update(catalogue=catalogue, history=history, embedder=embedder, vectors={},
                             domains=dom, hierarchy=hierarchy.from_catalogue(catalogue),
                             router=Router(self.settings, catalogue, history, embedder))
        return self.core

    def save(self) -> None:
        """Snapshot what the router learnt (history and domains) so a restart starts from it."""
        if not self.owns_history:
            return
        core = self.routing()
        core["history"].save(self.history_dir)
        (self.history_dir / "domains.json").write_text(json.dumps(core["domains"]))

    @property
    def history_dir(self):
        return self.settings.home / "history"

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
        return await self.send(self.topics.dead_letter, "dead_letter", record, key=key)
