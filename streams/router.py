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

from selfevolve.routing import domains
from selfevolve.errors import ValidationError
from selfevolve.routing import RouteQuery
from selfevolve.wire.tenancy import check_tenant, record_key
from selfevolve.wire.validation import validate_query
from selfevolve.wire.records import decision_record, source_of
from streams.evolution_follow import catalogue_for
from streams.runtime import infrastructure, now_ms, oversized

log = logging.getLogger("selfevolve.router")


async def route_batch(rt, core, messages) -> None:
    """Route raw query messages (anything with topic, partition, offset, key, value); returns once every
    output is acknowledged by the broker. A message that cannot be read or routed is dead-lettered with the
    reason, and the rest of the batch is routed."""
    acks, batch = [], []
    for msg in messages:
        try:
            # By length first: a compressed batch arrives decompressed, however small it was on the wire.
            too_big = oversized(msg.value, rt.settings.max_record_bytes)
            if too_big is not None:
                raise too_big
            query = validate_query(rt.codec.decode("query", msg.value), rt.settings.max_query_bytes)
            batch.append((msg, _owned(rt, msg.topic, query)))
        except Exception as e:  # noqa: BLE001 - whatever one record does wrong is that record's dead letter
            acks.append(await rt.send_dead_letter(msg, e))
    try:
        routed = await _decide(rt, core, batch) if batch else []
    except Exception as e:  # noqa: BLE001 - the batch-wide step failed: find the record(s) that made it fail
        if infrastructure(e):
            raise
        log.warning("routing a batch of %d failed (%s); routing its queries one by one", len(batch), e)
        routed = []
        for item in batch:
            try:
                routed += await _decide(rt, core, [item])
            except Exception as one:  # noqa: BLE001
                if infrastructure(one):
                    raise
                log.exception("dead-lettering query at %s/%s: routing it failed", item[0].partition, item[0].offset)
                acks.append(await rt.send_dead_letter(item[0], one))
    for record, key in routed:
        acks.append(await rt.send(rt.topics.route_decisions, "route_decision", record, key=key))
    for ack in acks:
        await ack


def _owned(rt, topic: str, query: dict) -> dict:
    """The query if its tenant may send it here: a tenant's topic carries only that tenant's queries (the
    broker lets only that tenant write it); the shared topic is the admin tooling's, trusted as it is."""
    tenant = check_tenant(query["tenant"])
    owner = rt.topics.tenant_of(topic)
    if owner is not None and tenant != owner:
        raise ValidationError(f"tenant mismatch: query {query['query_id']!r} says tenant {tenant!r} but was "
                              f"written to {topic}, the topic of tenant {owner!r}")
    return query


async def _decide(rt, core, batch: list) -> list[tuple[dict, str]]:
    """The decision records of (message, query) pairs, each encoded once to prove it can be sent; the shared
    state (domains, vectors) changes only when all of them succeed, so a failed batch can be redone."""
    queries = [q for _, q in batch]
    # Off the loop: a cache miss costs the model ~45 ms per text on these cores.
    vecs = await asyncio.to_thread(core["embedder"].encode, [q["text"] for q in queries])
    t0 = time.perf_counter()
    placed_domains, placed = domains.assign_many(core["domains"], vecs, [q["text"] for q in queries])
    # Each domain's own roles and activated students: evolution reaches routing at once.
    found = core["router"].route_many(
        [RouteQuery(q["query_id"], q["text"], q["tenant"], vec) for q, vec in zip(queries, vecs)],
        catalogues=[catalogue_for(rt, d) for d in placed])
    ms = (time.perf_counter() - t0) * 1000 / len(queries)  # each query's share of the batch's routing
    out = []
    for (msg, q), d, domain in zip(batch, found, placed):
        record = decision_record(d, q["metadata"], ms, now_ms(), domain, source_of(msg.topic, msg.partition, msg.offset))
        rt.codec.encode("route_decision", record)  # a record that cannot be encoded fails here, not mid-send
        # Keyed by (tenant, id): its requests and responses carry the same key, so share its partition.
        out.append((record, record_key(q)))
    core["domains"] = placed_domains
    for q, vec in zip(queries, vecs):
        core["vectors"][record_key(q)] = vec
    return out


async def run_router(rt, stop: asyncio.Event | None = None) -> None:
    """Consume `queries` until cancelled (or `stop` is set): each batch's decisions, dead letters and
    consumed offsets commit in one Kafka transaction."""
    from streams.kafka_io import transactional_loop

    core = await asyncio.to_thread(rt.routing)  # off the loop: loading the embedder takes seconds

    async def handle(producer, messages) -> None:
        await route_batch(rt.through(producer), core, messages)

    # The shared queries topic and every tenant's queries.<T>, including tenants added while it runs.
    await transactional_loop(rt.settings, "router", [rt.topics.queries], rt.settings.router_batch_size, handle, stop,
                             pattern=rt.topics.pattern("queries"))


def register(app, rt) -> None:
    @app.task
    async def router():
        await run_router(rt)
