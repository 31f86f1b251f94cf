"""Stats and feedback agents without a broker: tables fold contested scores, bad bytes are dead-lettered."""

from __future__ import annotations

import asyncio

from selfevolve import stats


def _score(model: str, domain: int, winner: bool, contested: bool = True) -> dict:
    return {"query_id": f"q-{model}-{winner}", "model": model, "relevance": 0.9, "correctness": 0.9,
            "completeness": 0.8, "clarity": 0.9, "composite": 0.9, "confidence": 0.95, "winner": winner,
            "domain": domain, "cost_usd": 0.001, "contested": contested, "ts_ms": 1}


def test_stats_agent_folds_only_contested_scores_and_promotes_a_strong_student(harness):
    h = harness("streams.stats", promote_min_n=3)
    core = h.rt.routing()
    student = next(s.name for s in core["catalogue"].active() if s.role == "student")
    events = [_score(student, 2, True) for _ in range(3)] + [_score(student, 2, True, contested=False)]

    async def run():
        async with h.agent("stats").test_context() as agent:
            await agent.put(b"\x00not avro")
            for e in events:
                await agent.put(h.rt.codec.encode("score", e))
            await h.wait_for("model_event", 1, timeout=30)

    asyncio.run(run())
    table = h.app.tables["model-stats"]
    expected = stats.fold([e for e in events if e["contested"]])
    assert dict(table["2"]) == expected
    (letter,) = h.of_kind("dead_letter")
    assert "not Avro" in letter["reason"]
    (promo,) = h.of_kind("model_event")
    assert (promo["kind"], promo["model"], promo["domain"], promo["new_role"]) == ("promote", student, 2, "ta")


def test_feedback_agent_learns_only_about_called_models(harness):
    h = harness("streams.feedback")
    core = h.rt.routing()
    from selfevolve.history import Record

    core["history"].add(core["embedder"].encode(["hello"])[0],
                        Record(query_id="q1", costs={"m1": 0.1}, quality={"m1": None}, winner="m1"))

    async def run():
        async with h.agent("feedback").test_context() as agent:
            for model, q in (("m1", 1.0), ("m2", 0.0)):
                fb = {"query_id": "q1", "model": model, "quality": q, "source": "test", "ts_ms": 1}
                await agent.put(h.rt.codec.encode("feedback", fb))
            await asyncio.sleep(1.0)

    asyncio.run(run())
    rec = core["history"].get("q1")
    assert rec.quality == {"m1": 1.0}  # m2 was never called: nothing is learnt about it
