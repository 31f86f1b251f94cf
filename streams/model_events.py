"""Evolution followers: hierarchy and threshold changes made in any process reach this worker's folds at once."""

from __future__ import annotations

from selfevolve.flow.events import Event
from streams.evolution_follow import follow, recover


def register(app, rt) -> None:
    rt.recovered.clear()  # the folds of this worker wait for the replay below (see Runtime.recovered)

    if rt.owns_history:
        # A serve worker: any number run, and each needs every event, so each reads every partition of
        # both topics itself (no consumer group). A bad record is skipped here; the history role, which
        # runs once, dead-letters it.
        @app.task
        async def follow_evolution():
            try:
                await recover(rt, keep_following=True)
            finally:
                rt.recovered.set()

        return

    @app.task
    async def recover_evolution():
        try:
            await recover(rt)
        finally:
            rt.recovered.set()

    # Each record goes to every fold registered in rt.followers (the history role's folds). Re-applying an
    # event this worker made itself is harmless: roles are set, not toggled, and thresholds replaced.
    @app.agent(rt.topic(rt.topics.model_events), name="model-events")
    async def model_events(stream):
        async def apply(record, at) -> None:
            follow(rt, Event("model_event", record, rt.topics.model_events, at))

        await rt.each(stream, "model_event", apply)  # a record that fails is dead-lettered, the rest go on

    @app.agent(rt.topic(rt.topics.strategy), name="strategy")
    async def strategy(stream):
        async def apply(record, at) -> None:
            follow(rt, Event("strategy", record, rt.topics.strategy, at))

        await rt.each(stream, "strategy", apply)
