"""Evolution followers: model events and threshold changes made in any process reach this worker's folds."""

from __future__ import annotations

import logging

from selfevolve.flow.events import Event
from streams.kafka_io import tail_consumer

log = logging.getLogger("selfevolve.evolution")
KINDS = ("model_event", "strategy")


def follow(rt, event: Event) -> None:
    """Hand one model_event or strategy event to every follower of this worker (rt.followers), in the order
    they registered. Each fold decides for itself: one that refuses the event (raises, changing nothing)
    does not keep it from the others; the first error is raised after all were called, so the caller
    dead-letters or skips the event."""
    if event.kind not in KINDS:
        raise ValueError(f"followers take model_event and strategy events, not {event.kind!r}")
    errors = []
    for follower in rt.followers:
        try:
            follower(event)
        except Exception as e:  # noqa: BLE001 - re-raised below, once every follower has had the event
            errors.append(e)
    if errors:
        raise errors[0]
    r = event.record
    if event.kind == "model_event":
        log.info("model event %s %s domain=%s %s->%s (%s)", r["kind"], r["model"], r["domain"],
                 r.get("old_role"), r.get("new_role"), r.get("reason", ""))
    else:
        log.info("thresholds θh=%.3f θl=%.3f (%s)", r["theta_high"], r["theta_low"], r.get("reason", ""))


async def recover(rt) -> None:
    """Fold the model-events and strategy topics from the start through the followers: a restarted worker
    keeps evolution. An event a follower refuses is skipped (it was dead-lettered when it first came)."""
    for topic, kind in ((rt.topics.model_events, "model_event"), (rt.topics.strategy, "strategy")):
        consumer = await tail_consumer(rt.settings, topic, from_beginning=True)
        try:
            end = await consumer.end_offsets(list(consumer.assignment()))
            while [tp for tp, off in end.items() if await consumer.position(tp) < off]:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        try:
                            follow(rt, Event(kind, rt.codec.decode(kind, m.value), m.topic, (m.partition, m.offset)))
                        except Exception as e:  # noqa: BLE001 - a bad historic event must not block start-up
                            log.warning("skipping %s at %s: %s", kind, m.offset, e)
        finally:
            await consumer.stop()
