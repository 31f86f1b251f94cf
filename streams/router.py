"""Router host: decode and validate queries, step the router fold over each batch, send its decisions.

The router reads `queries` with its own aiokafka consumer; a batch's decisions, dead letters and consumed
offsets commit in one Kafka transaction, so a crash re-routes the batch and no reader sees it twice. It was
a Faust agent, but after a SIGKILL and a restart with a backlog Faust's consumer sometimes skipped about
one fetch of queries per partition and committed past them (tests/integration/test_pipeline.py); the
router keeps no Faust table, so it does not need Faust's consumer. It routes what one poll returns as one
batch: one embedding call (the embedder's exact-text cache serves repeats), one domain placement, one
history search and one transaction (selfevolve/flow/router.py's step_many). Queries of a batch do not see
each other, which loses nothing: a query joins the history only when it is answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event
from selfevolve.wire.tenancy import check_tenant
from selfevolve.wire.validation import validate_query
from streams.runtime import infrastructure, oversized

log = logging.getLogger("selfevolve.router")


async def route_batch(rt, serve, messages) -> None:
    """Route raw query messages (anything with topic, partition, offset, key, value) with the serve state's
    router fold; returns once every output is acknowledged by the broker. A message that cannot be read or
    routed is dead-lettered with the reason, and the rest of the batch is routed."""
    acks, batch = [], []
    for msg in messages:
        try:
            # By length first: a compressed batch arrives decompressed, however small it was on the wire.
            too_big = oversized(msg.value, rt.settings.max_record_bytes)
            if too_big is not None:
                raise too_big
            query = validate_query(rt.codec.decode("query", msg.value), rt.settings.max_query_bytes)
            batch.append((msg, Event("query", _owned(rt, msg.topic, query), msg.topic, (msg.partition, msg.offset))))
        except Exception as e:  # noqa: BLE001 - whatever one record does wrong is that record's dead letter
            acks.append(await rt.send_dead_letter(msg, e))
    try:
        routed = await _decide(rt, serve, [e for _, e in batch]) if batch else []
    except Exception as e:  # noqa: BLE001 - the batch-wide step failed: find the record(s) that made it fail
        if infrastructure(e):
            raise
        log.warning("routing a batch of %d failed (%s); routing its queries one by one", len(batch), e)
        routed = []
        for msg, event in batch:
            try:
                routed += await _decide(rt, serve, [event])
            except Exception as one:  # noqa: BLE001
                if infrastructure(one):
                    raise
                log.exception("dead-lettering query at %s/%s: routing it failed", msg.partition, msg.offset)
                acks.append(await rt.send_dead_letter(msg, one))
    for out in routed:
        acks.append(await rt.send_out(out))
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


async def _decide(rt, serve, events: list[Event]) -> list:
    """The decision outputs of query events, each encoded once to prove it can be sent. Routing leaves the
    router state as it was (domains are learnt from the history topic, streams/history_follow.py), so a
    failed batch can be redone, and nothing here overwrites what the follower folded meanwhile."""
    fold = serve.router_fold
    # Off the loop: a cache miss costs the model ~45 ms per text on these cores. The fold's step stays on
    # the loop: it searches the history, which the scorer's deliveries add to there.
    vectors = await asyncio.to_thread(fold.embed, [e.record for e in events])
    t0 = time.perf_counter()
    _, outs = fold.step_many(serve.router_state, events, vectors=vectors)
    ms = (time.perf_counter() - t0) * 1000 / len(events)  # each query's share of the batch's routing
    # Latency is measured here, outside the fold, and only reported: nothing is decided on it.
    outs = [dataclasses.replace(o, record={**o.record, "decision_ms": ms}) for o in outs]
    for out in outs:
        rt.codec.encode(out.kind, out.record)  # a record that cannot be encoded fails here, not mid-send
    return outs


async def run_router(rt, stop: asyncio.Event | None = None) -> None:
    """Consume `queries` until cancelled (or `stop` is set): each batch's decisions, dead letters and
    consumed offsets commit in one Kafka transaction."""
    from streams.kafka_io import transactional_loop

    # Route on the hierarchy and thresholds the topics hold (not the catalogue's), and on the history the
    # history topic holds (a late joiner catches up first).
    serve = await rt.replicated()

    async def handle(producer, messages) -> None:
        await route_batch(rt.through(producer), serve, messages)

    # The shared queries topic and every tenant's queries.<T>, including tenants added while it runs.
    await transactional_loop(rt.settings, "router", [rt.topics.queries], rt.settings.router_batch_size, handle, stop,
                             pattern=rt.topics.pattern("queries"))


def register(app, rt) -> None:
    # Model events and threshold changes reach the router fold at once (streams/model_events.py).
    rt.followers.append(lambda event: rt.serving().follow(event))

    @app.task
    async def router():
        await run_router(rt)
