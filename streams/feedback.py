"""Feedback: verdicts about delivered answers, from their owner only, go to the history topic every replica learns.

A task of the serve worker with its own aiokafka consumer (group `<prefix>feedback`), subscribed by pattern
to the shared `feedback` topic and every tenant's `feedback.<T>`: Faust's pattern subscriptions do not work
(faust/transport/drivers/aiokafka.py says so), and a list of names would miss tenants added while it runs.
A record on `feedback.<T>` speaks for tenant T only: one whose tenant field names another tenant, or about
a query T does not own, is dead-lettered with the reason. The shared topic is the admin tooling's (replay,
demo), trusted as it is. Each poll's dead letters and consumed offsets commit in one Kafka transaction; a
verdict applied again after a crash replaces itself in the history, so it changes nothing. An accepted
verdict is not applied here but sent to the history topic in the same transaction (FeedbackFold), so every
serve worker's replica learns it, in the topic's one order.
"""

from __future__ import annotations

import asyncio
import logging

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event
from streams.runtime import infrastructure

log = logging.getLogger("selfevolve.feedback")


async def feedback_event(rt, serve, msg) -> Event:
    """Decode one feedback message and check who may give it; raises DecodeError or ValidationError."""
    fb = rt.codec.decode("feedback", msg.value)
    owner = rt.topics.tenant_of(msg.topic)
    if owner is not None:
        if fb["tenant"] != owner:
            raise ValidationError(f"tenant mismatch: feedback says tenant {fb['tenant']!r} but was written to "
                                  f"{msg.topic}, the topic of tenant {owner!r}")
        if serve.known(fb["query_id"], owner) is None and not await _known_after_sync(rt, serve, fb, owner):
            raise ValidationError(f"feedback for a query tenant {owner} does not own: no answered query "
                                  f"{fb['query_id']!r} of tenant {owner!r}")
    return Event("feedback", fb, msg.topic, (msg.partition, msg.offset))


async def _known_after_sync(rt, serve, fb: dict, owner: str) -> bool:
    """Whether the query is known once this replica folded every delivery committed so far: the client may
    have read its answer before this worker's replica folded the delivery."""
    follower = rt.history_follower
    if follower is None or not await follower.sync():
        return False
    return serve.known(fb["query_id"], owner) is not None


async def feedback_batch(rt, serve, messages) -> None:
    """Send one poll's accepted verdicts to the history topic; a record that cannot be read, is not allowed,
    or fails is dead-lettered and the rest go on. Returns once everything sent is acknowledged."""
    acks = []
    for msg in messages:
        try:
            _, outs = serve.feedback_fold.step(None, await feedback_event(rt, serve, msg))
            for out in outs:
                acks.append(await rt.send_out(out))
        except Exception as e:  # noqa: BLE001 - one poison record must not stop the stream
            if infrastructure(e):
                raise
            acks.append(await rt.send_dead_letter(msg, e))
    for ack in acks:
        await ack


async def run_feedback(rt, stop: asyncio.Event | None = None) -> None:
    """Consume the feedback topics until cancelled (or `stop` is set)."""
    from streams.kafka_io import transactional_loop

    serve = await rt.replicated()  # ownership is checked against the history replica

    async def handle(producer, messages) -> None:
        await feedback_batch(rt.through(producer), serve, messages)

    await transactional_loop(rt.settings, "feedback", [rt.topics.feedback], rt.settings.router_batch_size, handle,
                             stop, pattern=rt.topics.pattern("feedback"))


def register(app, rt) -> None:
    @app.task
    async def feedback():
        await run_feedback(rt)
