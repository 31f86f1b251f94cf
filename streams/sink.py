"""ClickHouse sink: batch every event type into its own table; offsets are committed only after the insert.

The sink is a task of the stream worker (it holds the chdb directory and serves SQL) but reads through its
own aiokafka consumer with manual commits rather than a Faust agent: Faust acks an event when its iterator
moves on, so a batch held across a hard kill with a backlog could count as consumed before it was stored
(the kill test lost rows that way). Here the contract of selfevolve.store.batching holds by construction.
Each stored batch's answers and verdicts then go to the meta-learner fold (streams/metalearner.py says why
there), whose strategy events are acknowledged before the batch's offsets are committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from selfevolve.store import batching
from selfevolve.errors import StoreError, ValidationError
from selfevolve.wire.tenancy import check_tenant
from selfevolve.wire.validation import validate_query

log = logging.getLogger("selfevolve.sink")


def decoded(rt, messages) -> list[tuple[object, str, dict]]:
    """(message, kind, record) for each message the sink can read, in the order read; undecodable ones are
    skipped here (and counted) because the stage that owns their topic dead-letters them, and the
    dead_letters table stores that record instead."""
    out = []
    for msg in messages:
        try:
            kind = rt.topics.kind_of(msg.topic)
            record = rt.codec.decode(kind, msg.value)
            if kind == "query":
                validate_query(record, rt.settings.max_query_bytes)
                check_tenant(record["tenant"])
            owner = rt.topics.tenant_of(msg.topic)
            if owner is not None and record.get("tenant") != owner:
                # The serve role dead-letters it; stored, it would land in another tenant's rows.
                raise ValidationError(f"tenant mismatch on {msg.topic}")
        except Exception:  # noqa: BLE001 - any record the sink cannot read is skipped and counted
            skipped(rt, 1)
            continue
        out.append((msg, kind, record))
    return out


def rows_by_kind(rt, messages) -> dict[str, list[dict]]:
    """Decode raw messages into rows per event kind (see decoded)."""
    return _by_kind(decoded(rt, messages))


def _by_kind(items) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = defaultdict(list)
    for _, kind, record in items:
        rows[kind].append(record)
    return rows


def skipped(rt, n: int) -> int:
    """Count records the sink skipped (rt.sink_skipped, shown on the history role's /stats); returns the total."""
    rt.sink_skipped += n
    total = rt.sink_skipped
    if n:
        log.warning("sink skipped %d record(s) it cannot read or store (%d in all)", n, total)
    return total


def insert_rows(store, kind: str, rows: list[dict], rt) -> None:
    """Insert a batch; if the store rejects it, insert row by row so a bad row is skipped (and counted), not
    retried forever. If the store itself is failing (it cannot answer SELECT 1), raise StoreError."""
    try:
        store.insert(kind, rows)
        return
    except StoreError as e:
        first = e
    log.warning("inserting %d %s rows failed (%s); inserting them one by one", len(rows), kind, first)
    failed = 1 if len(rows) == 1 else 0
    for row in rows if len(rows) > 1 else ():
        try:
            store.insert(kind, [row])
        except StoreError:
            failed += 1
    if failed == len(rows):
        try:
            store.query("SELECT 1")
        except StoreError:
            raise first from None  # the store is down: nothing committed, the rows are read again
    skipped(rt, failed)


async def run_sink(rt, store, stop: asyncio.Event | None = None, learner=None) -> None:
    """Consume every event topic into the store until cancelled (or `stop` is set). With `learner` (a
    streams.metalearner.MetaLearnerHost) each stored batch's answers and verdicts are fed to the meta-learner,
    restored from the store first, and its outputs acknowledged before the batch's offsets are committed."""
    from aiokafka.errors import CommitFailedError, IllegalStateError

    from streams.kafka_io import committing_consumer

    s = rt.settings
    if learner is not None:
        learner.restore(await asyncio.to_thread(learner.read, store))
    state = batching.initialize()
    positions: dict = {}  # partition -> next offset to commit once the pending batch is stored

    async def flush() -> None:
        nonlocal state, positions
        pending, to_commit = batching.result(state), dict(positions)
        items = decoded(rt, pending)
        for kind, rows in _by_kind(items).items():
            await asyncio.to_thread(insert_rows, store, kind, rows, rt)  # StoreError: nothing committed, task fails
        if learner is not None:
            await learner.feed(rt, items)  # after the insert: a restart restores the fold from these rows
        state, positions = batching.initialize(), {}
        if to_commit:
            try:
                await consumer.commit(to_commit)
            except (CommitFailedError, IllegalStateError) as e:
                # A rebalance took the partitions (IllegalStateError: a revoke flush while the pattern subscription
                # picked up a new tenant's topics, with nothing assigned at that moment): the next owner re-reads
                # them and the tables de-duplicate.
                log.warning("sink commit after insert failed, rows will be re-read: %s", e)

    # Every event topic and each tenant's queries.<T> and feedback.<T>, including tenants added while it runs.
    consumer = await committing_consumer(s, "sink", rt.topics.all(), lambda revoked: flush(), s.sink_batch_size,
                                         pattern=rt.topics.with_tenants(rt.topics.all()))
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
    from streams.metalearner import MetaLearnerHost
    from streams.sqlclient import serve_sql
    from streams.store import HistoryStore

    store = HistoryStore.open(rt.settings)
    store.ensure_schema()
    rt.store = store
    learner = MetaLearnerHost.attach(rt)
    endpoints: list = []

    @app.task
    async def sink():
        await run_sink(rt, store, learner=learner)

    @app.task
    async def sql_endpoint():
        """Serve guarded SQL for `selfevolve sql` (the sink process holds the chdb directory): token
        required, loopback only, and on the store's own read-only session, never the sink's connection."""
        endpoints.append(await serve_sql(store, rt.settings))  # held here: it serves as long as the worker runs
