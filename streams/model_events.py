"""Evolution followers: hierarchy and threshold changes made in any process reach this worker at once."""

from __future__ import annotations

from streams.evolution_follow import apply_model_event, apply_strategy, recover


def register(app, rt) -> None:
    @app.task
    async def recover_evolution():
        await recover(rt)

    @app.agent(rt.topic(rt.topics.model_events), name="model-events")
    async def model_events(stream):
        async def apply(e, _at) -> None:
            # Re-applying an event this worker made itself is harmless: roles are set, not toggled.
            apply_model_event(rt, e)

        await rt.each(stream, "model_event", apply)  # a record that fails is dead-lettered, the rest go on

    @app.agent(rt.topic(rt.topics.strategy), name="strategy")
    async def strategy(stream):
        # The meta-learner runs in the history role; the router it tunes runs in the serve role.
        async def apply(e, _at) -> None:
            apply_strategy(rt, e)

        await rt.each(stream, "strategy", apply)
