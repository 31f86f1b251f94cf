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


async def recover(rt, keep_following: bool = False) -> None:
    """Fold the model-events and strategy topics from the start through the followers: a restarted worker
    keeps evolution. An event a follower refuses is skipped (it was dead-lettered when it first came).
    Sets rt.recovered once what the topics held at start is folded; with keep_following, goes on folding
    what comes after (a serve worker: every one of them reads every partition, no consumer group)."""
    consumers = [(await tail_consumer(rt.settings, topic, from_beginning=True), kind)
                 for topic, kind in ((rt.topics.model_events, "model_event"), (rt.topics.strategy, "strategy"))]
    try:
        ends = [await c.end_offsets(list(c.assignment())) for c, _ in consumers]
        while True:
            behind = False
            for (consumer, kind), end in zip(consumers, ends):
                for msgs in (await consumer.getmany(timeout_ms=100 if keep_following else 500)).values():
                    for m in msgs:
                        _apply(rt, kind, m)
                        rt.followed[f"{m.topic}:{m.partition}"] = m.offset + 1
                behind = behind or any([await consumer.position(tp) < off for tp, off in end.items()])
            if not behind:
                rt.recovered.set()
                if not keep_following:
                    return
    finally:
        for consumer, _ in consumers:
            await consumer.stop()


def _apply(rt, kind: str, m) -> None:
    try:
        follow(rt, Event(kind, rt.codec.decode(kind, m.value), m.topic, (m.partition, m.offset)))
    except Exception as e:  # noqa: BLE001 - a bad historic event must not block start-up
        log.warning("skipping %s at %s: %s", kind, m.offset, e)
