"""Feedback agent: verdicts about delivered answers update the routing history (bandit rule)."""

from __future__ import annotations


from selfevolve import learning


def register(app, rt) -> None:
    @app.agent(rt.topic(rt.topics.feedback), name="feedback")
    async def feedback(stream):
        core = rt.routing()
        async for fb in rt.records(stream, "feedback"):
            # False means "not learnable" (model not called, query not delivered): ignored by design.
            learning.apply_feedback(core["history"], learning.Feedback(fb["query_id"], fb["model"], fb["quality"]))

    @app.timer(interval=10.0)
    async def save_history():
        """Snapshot the history so a restarted router starts from what it had learnt."""
        rt.save()  # on the loop: agents must not mutate the history mid-write
