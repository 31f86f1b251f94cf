"""Router agent: decode and validate each query, embed it, call Router.route(), publish the decision."""

from __future__ import annotations

import asyncio
import time

from selfevolve import domains
from selfevolve.errors import DecodeError, ValidationError
from selfevolve.routing import RouteQuery
from selfevolve.validation import validate_query
from selfevolve.wire import decision_record
from streams.evolution import catalogue_for
from streams.runtime import now_ms


def register(app, rt) -> None:
    @app.agent(rt.topic(rt.topics.queries), name="router")
    async def router(stream):
        core = rt.routing()
        # One event at a time: Faust's batching helpers (take_events, or manual acks over a batch) were
        # seen to let offsets be committed for queries never routed after a restart with a backlog.
        # The embedder's exact-text cache carries repeats; distinct texts pay one model call each.
        async for event in stream.events():
            try:
                q = validate_query(rt.codec.decode("query", event.value), rt.settings.max_query_bytes)
            except (DecodeError, ValidationError) as e:
                await rt.dead_letter(event, e)
                continue
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
