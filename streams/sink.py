"""ClickHouse sink: batch every event type into its own table; offsets are acked only after the flush."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from selfevolve.errors import DecodeError, ValidationError
from selfevolve.topics import STAGES
from selfevolve.validation import validate_query

log = logging.getLogger("selfevolve.sink")


def register(app, rt) -> None:
    from streams.store import HistoryStore, serve_sql

    store = HistoryStore.open(rt.settings)
    store.ensure_schema()
    rt.core["store"] = store
    names = [f"{rt.settings.topic_prefix}{s}" for s in STAGES if s != "inference-requests"]
    names += [rt.topics.requests_for(b) for b in ("replay", "openai", "local")]

    @app.agent(rt.topic(*names), name="sink")
    async def sink(stream):
        # take_events acks a batch only when the loop comes back for the next one, i.e. after insert.
        async for events in stream.take_events(rt.settings.sink_batch_size,
                                               within=rt.settings.sink_flush_seconds):
            rows: dict[str, list[dict]] = defaultdict(list)
            for event in events:
                kind = rt.topics.kind_of(event.message.topic)
                try:
                    record = rt.codec.decode(kind, event.value)
                    if kind == "query":
                        validate_query(record, rt.settings.max_query_bytes)
                except (DecodeError, ValidationError):
                    continue  # the stage that owns the topic dead-letters it; dead_letters stores it
                rows[kind].append(record)
            for kind, batch in rows.items():
                await asyncio.to_thread(store.insert, kind, batch)

    @app.task
    async def sql_endpoint():
        """Serve read-only SQL for `selfevolve sql`: the sink process holds the chdb directory."""
        rt.core["sql"] = await serve_sql(store, port=rt.settings.sql_port)
