"""ClickHouse sink: batch every event type into its own table; offsets are committed only after the insert.

The sink is a task of the stream worker (it holds the chdb directory and serves SQL) but reads through its
own aiokafka consumer with manual commits rather than a Faust agent: Faust acks an event when its iterator
moves on, so a batch held across a hard kill with a backlog could count as consumed before it was stored
(the kill test lost rows that way). Here the contract of selfevolve.batching holds by construction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from selfevolve import batching
from selfevolve.errors import DecodeError, StoreError, ValidationError
from selfevolve.validation import validate_query

log = logging.getLogger("selfevolve.sink")


def rows_by_kind(rt, messages) -> dict[str, list[dict]]:
    """Decode raw messages into rows per event kind; undecodable ones are skipped here because the stage
    that owns their topic dead-letters them, and the dead_letters table stores that record instead."""
    rows: dict[str, list[dict]] = defaultdict(list)
    for msg in messages:
        kind = rt.topics.kind_of(msg.topic)
        try:
            record = rt.codec.decode(kind, msg.value)
            if kind == "query":
                validate_query(record, rt.settings.max_query_bytes)
        except (DecodeError, ValidationError):
            continue
        rows[kind].append(record)
    return rows


async def run_sink(rt, store, stop: asyncio.Event | None = None) -> None:
    """Consume every event topic into the store until cancelled (or `stop` is set)."""
    from aiokafka.errors import CommitFailedError

    from streams.kafka_io import committing_consumer

    s = rt.settings
    state = batching.initialize()
    positions: dict = {}  # partition -> next offset to commit once the pending batch is stored

    async def flush() -> None:
        nonlocal state, positions
        pending, to_commit = batching.result(state), dict(positions)
        for kind, rows in rows_by_kind(rt, pending).items():
            await asyncio.to_thread(store.insert, kind, rows)  # StoreError: nothing committed, task fails
        state, positions = batching.initialize(), {}
        if to_commit:
            try:
                await consumer.commit(to_commit)
            except CommitFailedError as e:
                # A rebalance took the partitions: the next owner re-reads them and the tables de-duplicate.
                log.warning("sink commit after insert failed, rows will be re-read: %s", e)

    consumer = await committing_consumer(s, "sink", rt.topics.all(), lambda revoked: flush(), s.sink_batch_size)
    try:
        while stop is None or not stop.is_set():
            due = batching.deadline(state, s.sink_flush_seconds)
            wait_s = s.sink_flush_seconds if due is None else max(0.0, due - time.monotonic())
            got = await consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=s.sink_batch_size)
            now = time.monotonic()
            for tp, messages in got.items():
                for msg in messages:
                    state = batching.agg(state, msg, now)
                positions[tp] = messages[-1].offset + 1
            if batching.ready(state, time.monotonic(), s.sink_batch_size, s.sink_flush_seconds):
                await flush()
        await flush()
    except asyncio.CancelledError:
        await flush()  # a graceful stop cancels the task: store what is pending before leaving
        raise
    except StoreError:
        log.exception("sink insert failed; offsets not committed, the rows will be re-read on restart")
        raise
    finally:
        await consumer.stop()


def register(app, rt) -> None:
    from streams.store import HistoryStore, serve_sql

    store = HistoryStore.open(rt.settings)
    store.ensure_schema()
    rt.core["store"] = store

    @app.task
    async def sink():
        await run_sink(rt, store)

    @app.task
    async def sql_endpoint():
        """Serve read-only SQL for `selfevolve sql`: the sink process holds the chdb directory."""
        rt.core["sql"] = await serve_sql(store, port=rt.settings.sql_port)
