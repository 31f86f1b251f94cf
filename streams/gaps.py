"""Gap agent: a window per domain over delivered answers; gap open/close events, then spawn commands."""

from __future__ import annotations

from selfevolve import gaps, spawning
from streams.evolution import apply_model_event


def register(app, rt) -> None:
    windows = app.Table("gap-windows", default=None, partitions=rt.settings.topic_partitions)
    spawner = app.Table("spawner", default=None, partitions=rt.settings.topic_partitions)
    mode = rt.settings.spawn_mode

    @app.agent(rt.topic(rt.topics.scores), name="gaps")
    async def gap_agent(stream):
        core = rt.routing()
        async for score in rt.records(stream, "score"):
            if not score["winner"]:
                continue  # one outcome per delivered answer: the winner's
            d = str(score["domain"])
            # The scorer's no-gold correctness of the delivered answer stands in for "failed".
            outcome = {"domain": score["domain"], "confidence": score["confidence"],
                       "failed": score["correctness"] < 0.5, "ts_ms": score["ts_ms"]}
            state, opened = gaps.step(windows.get(d) or gaps.initialize(rt.settings.window_size),
                                      outcome, rt.settings)
            windows[d] = state
            for g in opened:
                await rt.publish(rt.topics.gaps, "gap", g, key=d)
                roster = {"hierarchy": core["hierarchy"], "stats": {},
                          # Cheapest first: a spawned student is meant to be cheap.
                          "reserve": [s.name for s in sorted(core["catalogue"].reserve(),
                                                             key=lambda s: (s.cost_per_call or 0.0, s.name))
                                      if s.backend in rt.settings.spawn_backends]}
                sp, commands = spawning.step(spawner.get(d) or spawning.initialize(), g, roster,
                                             rt.settings, mode)
                spawner[d] = sp
                for c in commands:
                    await rt.publish(rt.topics.spawns, "spawn", c, key=d)
                    for e in spawning.execute(c, roster):
                        apply_model_event(rt, e)
                        await rt.publish(rt.topics.model_events, "model_event", e, key=e["model"])
