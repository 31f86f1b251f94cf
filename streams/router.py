"""Router: decode and validate queries, embed them, call Router.route_many(), publish the decisions.

The router reads `queries` with its own aiokafka consumer; a batch's decisions, dead letters and consumed
offsets commit in one Kafka transaction, so a crash re-routes the batch and no reader sees it twice. It was
a Faust agent, but after a SIGKILL and a restart with a backlog Faust's consumer sometimes skipped about
one fetch of queries per partition and committed past them (tests/integration/test_pipeline.py); the
router keeps no Faust table, so it does not need Faust's consumer. It routes what one poll returns as one
batch: one embedding call (the embedder's exact-text cache serves repeats), one domain placement, one
history search and one transaction. Queries of a batch do not see each other, which loses nothing: a query
joins the history only when it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from selfevolve import domains
from selfevolve.errors import DecodeError, ValidationError
from selfevolve.routing import RouteQuery
from selfevolve.validation import validate_query
from selfevolve.wire import decision_record
from streams.evolution import catalogue_for
from streams.runtime import now_ms

log = logging.getLogger("selfevolve.router")


async def route_batch(rt, core, messages) -> None:
    """Route raw query messages (anything with topic, partition, offset, key, value); returns once every
    output is acknowledged by the broker."""
    acks, queries = [], []
    for msg in messages:
        try:
            queries.append(validate_query(rt.codec.decode("query", msg.value), rt.settings.max_query_bytes))
        except (DecodeError, ValidationError) as e:
            acks.append(await rt.send_dead_letter(msg, e))
    if queries:
        # Off the loop: a cache miss costs the model ~45 ms per text on these cores.
        vecs = await asyncio.to_thread(core["embedder"].encode, [q["text"] for q in queries])
        t0 = time.perf_counter()
        core["domains"], placed = domains.assign_many(core["domains"], vecs, [q["text"] for q in queries])
        # Each domain's own roles and activated students: evolution reaches routing at once.
        found = core["router"].route_many(
            [RouteQuery(q["query_id"], q["text"], q["tenant"], vec) for q, vec in zip(queries, vecs)],
            catalogues=[catalogue_for(rt, d) for d in placed])
        decided = list(zip(found, placed))
        ms = (time.perf_counter() - t0) * 1000 / len(queries)  # each query's share of the batch's routing
        for q, vec, (d, domain) in zip(queries, vecs, decided):
            core["vectors"][q["query_id"]] = vec
            record = decision_record(d, q["metadata"], ms, now_ms(), domain)
            acks.append(await rt.send(rt.topics.route_decisions, "route_decision", record, key=q["query_id"]))
    for ack in acks:
        await ack


async def run_router(rt, stop: asyncio.Event | None = None) -> None:
    """Consume `queries` until cancelled (or `stop` is set): each batch's decisions, dead letters and
    consumed offsets commit in one Kafka transaction."""
    from streams.kafka_io import transactional_loop

    core = await asyncio.to_thread(rt.routing)  # off the loop: loading the embedder takes seconds

    async def handle(producer, messages) -> None:
        await route_batch(rt.through(producer), core, messages)

    await transactional_loop(rt.settings, "router", [rt.topics.queries], rt.settings.router_batch_size, handle, stop)


def register(app, rt) -> None:
    @app.task
    async def router():
        await run_router(rt)
