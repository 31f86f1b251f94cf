"""Router: decode and validate each query, embed it, call Router.route(), publish the decision.

The router reads `queries` with its own aiokafka consumer and commits an offset only after that query's
decision (or dead letter) is acknowledged. It was a Faust agent, but after a SIGKILL and a restart with a
backlog Faust's consumer sometimes skipped about one fetch of queries per partition and committed past
them (tests/integration/test_pipeline.py); the router keeps no Faust table, so it does not need Faust's
consumer. One query at a time: the embedder's exact-text cache carries repeats.
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


async def route_one(rt, core, msg) -> None:
    """Route one raw query message (anything with topic, partition, offset, key, value)."""
    try:
        q = validate_query(rt.codec.decode("query", msg.value), rt.settings.max_query_bytes)
    except (DecodeError, ValidationError) as e:
        await rt.dead_letter_message(msg, e)
        return
    vec = (await asyncio.to_thread(core["embedder"].encode, [q["text"]]))[0]
    t0 = time.perf_counter()
    core["domains"], domain = domains.assign(core["domains"], vec, q["text"])
    # The domain's own roles and activated students: evolution reaches routing at once.
    router = core["router"].with_catalogue(catalogue_for(rt, domain))
    decision = router.route(RouteQuery(q["query_id"], q["text"], q["tenant"], vec))
    ms = (time.perf_counter() - t0) * 1000
    core["vectors"][q["query_id"]] = vec
    record = decision_record(decision, q["metadata"], ms, now_ms(), domain)
    await rt.publish(rt.topics.route_decisions, "route_decision", record, key=q["query_id"])


async def run_router(rt, stop: asyncio.Event | None = None) -> None:
    """Consume `queries` until cancelled (or `stop` is set), committing after each acknowledged decision."""
    from streams.kafka_io import committing_consumer

    core = await asyncio.to_thread(rt.routing)  # off the loop: loading the embedder takes seconds
    routed: dict = {}  # partition -> next offset; every query before it has an acknowledged decision

    async def commit() -> None:
        if routed:
            await consumer.commit(dict(routed))
            routed.clear()

    consumer = await committing_consumer(rt.settings, "router", [rt.topics.queries], commit, 100)
    try:
        while stop is None or not stop.is_set():
            got = await consumer.getmany(timeout_ms=500)
            for tp, messages in got.items():
                for msg in messages:
                    await route_one(rt, core, msg)
                    routed[tp] = msg.offset + 1
            await commit()
    finally:
        await consumer.stop()


def register(app, rt) -> None:
    @app.task
    async def router():
        await run_router(rt)
