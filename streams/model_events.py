"""Model-events agent: hierarchy changes made elsewhere (trainer, operators) reach this router at once."""

from __future__ import annotations

from streams.evolution import apply_model_event


def register(app, rt) -> None:
    @app.agent(rt.topic(rt.topics.model_events), name="model-events")
    async def model_events(stream):
        async for e in rt.records(stream, "model_event"):
            # Re-applying an event this worker made itself is harmless: roles are set, not toggled.
            apply_model_event(rt, e)
