"""Shared evolution state of a stream worker: the hierarchy and thresholds, applied to the router at once."""

from __future__ import annotations

import logging

from selfevolve.evolution import hierarchy as hier
from selfevolve.evolution.hierarchy import domain_catalogue
from selfevolve.wire.codec import Codec
from streams.kafka_io import tail_consumer

log = logging.getLogger("selfevolve.evolution")


def catalogue_for(rt, domain: int):
    """The catalogue the router sees for one domain: its roles and the reserves activated there."""
    core = rt.routing()
    key = (domain, core["hierarchy"].get("applied", 0))
    views = core.setdefault("views", {})
    if key not in views:
        views[key] = domain_catalogue(core["catalogue"], core["hierarchy"], domain)
    return views[key]


def apply_model_event(rt, event: dict) -> None:
    core = rt.routing()
    core["hierarchy"] = hier.apply(core["hierarchy"], event)
    log.info("model event %s %s domain=%s %s->%s (%s)", event["kind"], event["model"], event["domain"],
             event.get("old_role"), event.get("new_role"), event.get("reason", ""))


def apply_strategy(rt, event: dict) -> None:
    core = rt.routing()
    core["router"] = core["router"].with_thresholds(event["theta_high"], event["theta_low"])
    log.info("thresholds θh=%.3f θl=%.3f (%s)", event["theta_high"], event["theta_low"], event.get("reason", ""))


async def recover(rt) -> None:
    """Fold the model-events and strategy topics from the start: a restarted worker keeps evolution."""
    codec = Codec.from_dir()
    for topic, kind, apply in ((rt.topics.model_events, "model_event", apply_model_event),
                               (rt.topics.strategy, "strategy", apply_strategy)):
        consumer = await tail_consumer(rt.settings, topic, from_beginning=True)
        try:
            end = await consumer.end_offsets(list(consumer.assignment()))
            while [tp for tp, off in end.items() if await consumer.position(tp) < off]:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        try:
                            apply(rt, codec.decode(kind, m.value))
                        except Exception as e:  # noqa: BLE001 - a bad historic event must not block start-up
                            log.warning("skipping %s at %s: %s", kind, m.offset, e)
        finally:
            await consumer.stop()
