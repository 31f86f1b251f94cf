"""Stats and feedback agents without a broker: tables fold contested scores, bad bytes are dead-lettered."""

from __future__ import annotations

import asyncio

from selfevolve.evolution import stats


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
    assert dict(table["2"]["value"]) == expected
    (letter,) = h.of_kind("dead_letter")
    assert "not Avro" in letter["reason"]
    (promo,) = h.of_kind("model_event")
    assert (promo["kind"], promo["model"], promo["domain"], promo["new_role"]) == ("promote", student, 2, "ta")


def test_feedback_agent_learns_only_about_called_models(harness):
    h = harness("streams.feedback")
    core = h.rt.routing()
    from selfevolve.routing.history import Record

    core["history"].add(core["embedder"].encode(["hello"])[0],
                        Record(query_id="q1", costs={"m1": 0.1}, quality={"m1": None}, winner="m1"))

    async def run():
        from types import SimpleNamespace

        from streams.feedback import feedback_batch

        msgs = [SimpleNamespace(topic=h.rt.topics.feedback, partition=0, offset=i, key=None, value=h.rt.codec.encode(
                    "feedback", {"query_id": "q1", "model": model, "quality": q, "source": "test", "ts_ms": 1}))
                for i, (model, q) in enumerate((("m1", 1.0), ("m2", 0.0)))]
        await feedback_batch(h.rt, core, msgs)

    asyncio.run(run())
    rec = core["history"].get("q1")
    assert rec.quality == {"m1": 1.0}  # m2 was never called: nothing is learnt about it


def test_stats_agent_counts_a_redelivered_score_once(harness):
    """Scores seen again after a crash (offsets not yet committed, tables restored) change nothing."""
    h = harness("streams.stats", promote_min_n=3)
    core = h.rt.routing()
    student = next(s.name for s in core["catalogue"].active() if s.role == "student")
    teacher = next(s.name for s in core["catalogue"].active() if s.role == "supervisor")
    events = [_score(student, 2, True) for _ in range(3)]

    async def run():
        async with h.agent("stats").test_context() as agent:
            for e in events:
                await agent.put(h.rt.codec.encode("score", e))
            await h.wait_for("model_event", 1, timeout=30)
            agent.sent_offset = 1  # the consumer resumes from an older committed offset
            for e in events[1:]:
                await agent.put(h.rt.codec.encode("score", e))
            await asyncio.sleep(0.5)
            redelivered.extend(h.of_kind("model_event"))
            await agent.put(h.rt.codec.encode("score", _score(teacher, 2, False)))  # a new one
            await asyncio.sleep(0.5)

    redelivered: list[dict] = []
    asyncio.run(run())
    assert h.app.tables["model-stats"]["2"]["value"] == stats.fold(events + [_score(teacher, 2, False)])
    assert h.app.tables["model-stats"]["2"]["at"] == [0, 3]
    assert h.app.tables["model-stats-window"]["2"]["at"] == [0, 3]
    assert [(e["old_role"], e["new_role"]) for e in redelivered] == [("student", "ta")]  # not decided again
    # A new score still decides: the student, now a TA with the same record, moves up one more step.
    assert [(e["old_role"], e["new_role"]) for e in h.of_kind("model_event")] == [("student", "ta"),
                                                                                   ("ta", "teacher")]


def test_gap_agent_opens_and_spawns_once_when_scores_are_redelivered(harness):
    h = harness("streams.gaps", window_size=4, gap_confidence=0.9, max_models_per_domain=12)
    weak = [{**_score("m", 5, True), "confidence": 0.1, "correctness": 0.0} for _ in range(3)]

    async def run():
        async with h.agent("gaps").test_context() as agent:
            for e in weak:
                await agent.put(h.rt.codec.encode("score", e))
            await h.wait_for("model_event", 1, timeout=30)
            agent.sent_offset = 0
            for e in weak:
                await agent.put(h.rt.codec.encode("score", e))
            await asyncio.sleep(0.5)

    asyncio.run(run())
    (gap,) = h.of_kind("gap")
    assert (gap["domain"], gap["kind"]) == (5, "open")
    (spawn,) = h.of_kind("spawn")
    (activate,) = h.of_kind("model_event")
    assert (spawn["domain"], activate["kind"], activate["new_role"]) == (5, "activate", "student")
    window = h.app.tables["gap-windows"]["5"]
    assert window["at"] == [0, 2] and window["value"]["domains"]["5"]["traffic"] == 3
    assert h.app.tables["spawner"]["5"]["value"]["spawned"] == 1


async def _hold_until_sent(h, kind: str, n: int = 1) -> None:
    for _ in range(600):
        if len(h.of_kind(kind)) >= n:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # room for a table write that must not come yet


async def _release_until(h, done, timeout: float = 30) -> None:
    for _ in range(int(timeout * 20)):
        h.release_acks()
        if done():
            return
        await asyncio.sleep(0.05)


def test_stats_table_records_a_score_only_after_its_promotion_is_acknowledged(harness):
    """A crash before the acknowledgement re-delivers the score; the table must not already hold it, or the
    redelivery would be skipped and the promotion lost."""
    h = harness("streams.stats", promote_min_n=3)
    student = next(s.name for s in h.rt.routing()["catalogue"].active() if s.role == "student")
    seen: dict = {}

    async def run():
        async with h.agent("stats").test_context() as agent:
            h.hold_acks = True
            task = asyncio.create_task(agent.put(h.rt.codec.encode("score", _score(student, 2, True))))
            for _ in range(2):
                await task
                task = asyncio.create_task(agent.put(h.rt.codec.encode("score", _score(student, 2, True))))
            await _hold_until_sent(h, "model_event")
            seen["held"] = h.app.tables["model-stats"]["2"]["at"]
            await _release_until(h, lambda: h.app.tables["model-stats"]["2"]["at"] == [0, 2])
            seen["released"] = h.app.tables["model-stats"]["2"]["at"]
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert seen == {"held": [0, 1], "released": [0, 2]}


def test_gap_window_records_a_score_only_after_its_gap_and_spawn_are_acknowledged(harness):
    h = harness("streams.gaps", window_size=4, gap_confidence=0.9, max_models_per_domain=12)
    weak = {**_score("m", 5, True), "confidence": 0.1, "correctness": 0.0}
    seen: dict = {}

    async def run():
        async with h.agent("gaps").test_context() as agent:
            await agent.put(h.rt.codec.encode("score", weak))
            h.hold_acks = True
            task = asyncio.create_task(agent.put(h.rt.codec.encode("score", weak)))  # opens the gap
            await _hold_until_sent(h, "gap")
            seen["held"] = (h.app.tables["gap-windows"]["5"]["at"], h.app.tables["spawner"].get("5"))
            await _release_until(h, lambda: h.app.tables["gap-windows"]["5"]["at"] == [0, 1])
            seen["released"] = (h.app.tables["gap-windows"]["5"]["at"], h.app.tables["spawner"]["5"]["at"])
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert seen == {"held": ([0, 0], None), "released": ([0, 1], [0, 1])}
    assert [len(h.of_kind(k)) for k in ("gap", "spawn", "model_event")] == [1, 1, 1]
