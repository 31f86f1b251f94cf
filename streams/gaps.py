"""Gap agent: a window per domain over delivered answers; gap open/close events, then spawn commands."""

from __future__ import annotations

from selfevolve.evolution import gaps, spawning

from selfevolve.wire import once
from streams.evolution_follow import apply_model_event


def register(app, rt) -> None:
    # Values are selfevolve.wire.once entries, so a score redelivered after a crash is not folded twice.
    windows = app.Table("gap-windows", default=None, partitions=rt.settings.topic_partitions)
    spawner = app.Table("spawner", default=None, partitions=rt.settings.topic_partitions)
    mode = rt.settings.spawn_mode

    @app.agent(rt.topic(rt.topics.scores), name="gaps")
    async def gap_agent(stream):
        core = rt.routing()

        async def fold(score, at) -> None:
            if not score["winner"]:
                return  # one outcome per delivered answer: the winner's
            d = str(score["domain"])
            entry = windows.get(d)
            if once.applied(entry, at):
                return
            # The scorer's no-gold correctness of the delivered answer stands in for "failed".
            outcome = {"domain": score["domain"], "confidence": score["confidence"],
                       "failed": score["correctness"] < 0.5, "ts_ms": score["ts_ms"]}
            state, opened = gaps.step(once.value(entry, None) or gaps.initialize(rt.settings.window_size),
                                      outcome, rt.settings)
            for g in opened:
                await rt.publish(rt.topics.gaps, "gap", g, key=d)
                spawned = spawner.get(d)
                if once.applied(spawned, at):
                    continue  # spawned for this score before a crash; its commands were acknowledged then
                roster = {"hierarchy": core["hierarchy"], "stats": {},
                          # Cheapest first: a spawned student is meant to be cheap.
                          "reserve": [s.name for s in sorted(core["catalogue"].reserve(),
                                                             key=lambda s: (s.cost_per_call or 0.0, s.name))
                                      if s.backend in rt.settings.spawn_backends]}
                sp, commands = spawning.step(once.value(spawned, None) or spawning.initialize(), g,
                                             roster, rt.settings, mode)
                for c in commands:
                    await rt.publish(rt.topics.spawns, "spawn", c, key=d)
                    for e in spawning.execute(c, roster):
                        apply_model_event(rt, e)
                        await rt.publish(rt.topics.model_events, "model_event", e, key=e["model"])
                spawner[d] = once.advance(sp, at)
            # Last, after every output is acknowledged: a crash before this line repeats the outputs, never
            # loses them.
            windows[d] = once.advance(state, at)

        await rt.each(stream, "score", fold)  # a score that fails is dead-lettered, the rest go on
