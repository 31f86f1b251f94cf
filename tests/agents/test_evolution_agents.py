"""Evolution and feedback agents without a broker: tables fold contested scores, bad bytes are dead-lettered,
a redelivered score is folded once, and tables are written only after their outputs are acknowledged."""

from __future__ import annotations

import asyncio

from selfevolve.evolution import stats
from selfevolve.flow.events import Event
from selfevolve.models.catalogue import Catalogue
from streams.evolution_agent import GAPS_TABLE, STATS_TABLE


def _score(model: str, domain: int, winner: bool, contested: bool = True) -> dict:
    return {"query_id": f"q-{model}-{winner}", "model": model, "relevance": 0.9, "correctness": 0.9,
            "completeness": 0.8, "clarity": 0.9, "composite": 0.9, "confidence": 0.95, "winner": winner,
            "domain": domain, "cost_usd": 0.001, "contested": contested, "ts_ms": 1}


def _named(h, role: str) -> str:
    return next(s.name for s in Catalogue.load(h.rt.settings.catalogue).active() if s.role == role)


def test_stats_agent_folds_only_contested_scores_and_promotes_a_strong_student(harness):
    h = harness("streams.evolution_agent", promote_min_n=3)
    student = _named(h, "student")
    events = [_score(student, 2, True) for _ in range(3)] + [_score(student, 2, True, contested=False)]

    async def run():
        async with h.agent("evolution").test_context() as agent:
            await agent.put(b"\x00not avro")
            for e in events:
                await agent.put(h.rt.codec.encode("score", e))
            await h.wait_for("model_event", 1, timeout=30)

    asyncio.run(run())
    table = h.app.tables[STATS_TABLE]
    expected = stats.fold([e for e in events if e["contested"]])
    assert dict(table["2"]["value"]["alltime"]) == expected
    (letter,) = h.of_kind("dead_letter")
    assert "not Avro" in letter["reason"]
    (promo,) = h.of_kind("model_event")
    assert (promo["kind"], promo["model"], promo["domain"], promo["new_role"]) == ("promote", student, 2, "ta")


def test_feedback_agent_learns_only_about_called_models(harness):
    h = harness("streams.feedback")
    serve = h.rt.serving()
    from selfevolve.routing.history import Record

    serve.history.add(serve.embedder.encode(["hello"])[0],
                      Record(query_id="q1", costs={"m1": 0.1}, quality={"m1": None}, winner="m1"))

    async def run():
        from types import SimpleNamespace

        from streams.feedback import feedback_batch

        msgs = [SimpleNamespace(topic=h.rt.topics.feedback, partition=0, offset=i, key=None, value=h.rt.codec.encode(
                    "feedback", {"query_id": "q1", "model": model, "quality": q, "source": "test", "ts_ms": 1}))
                for i, (model, q) in enumerate((("m1", 1.0), ("m2", 0.0)))]
        await feedback_batch(h.rt, serve, msgs)

    asyncio.run(run())
    # Both go to the history topic (the shared feedback topic is trusted); every replica folds them.
    sent = [(topic, key, r) for topic, kind, r, key in h.sent if kind == "history"]
    assert [(topic, key, r["event"], r["model"]) for topic, key, r in sent] == [
        (h.rt.topics.history, "default/q1", "feedback", "m1"), (h.rt.topics.history, "default/q1", "feedback", "m2")]
    assert serve.history.get("q1").quality == {"m1": None}  # not applied here: the follower folds the topic
    for _, _, r in sent:
        serve.apply(Event("history", r))
    assert serve.history.get("q1").quality == {"m1": 1.0}  # m2 was never called: nothing is learnt about it


def test_stats_agent_counts_a_redelivered_score_once(harness):
    """Scores seen again after a crash (offsets not yet committed, tables restored) change nothing."""
    h = harness("streams.evolution_agent", promote_min_n=3)
    student, teacher = _named(h, "student"), _named(h, "supervisor")
    events = [_score(student, 2, True) for _ in range(3)]

    async def run():
        async with h.agent("evolution").test_context() as agent:
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
    entry = h.app.tables[STATS_TABLE]["2"]
    assert entry["value"]["alltime"] == stats.fold(events + [_score(teacher, 2, False)])
    window = stats.window_result(entry["value"]["window"][stats.key(student, 2)])
    assert entry["at"] == [0, 3] and window["n"] == 3
    assert [(e["old_role"], e["new_role"]) for e in redelivered] == [("student", "ta")]  # not decided again
    # A new score still decides: the student, now a TA with the same record, moves up one more step.
    assert [(e["old_role"], e["new_role"]) for e in h.of_kind("model_event")] == [("student", "ta"),
                                                                                   ("ta", "teacher")]


def test_gap_agent_opens_and_spawns_once_when_scores_are_redelivered(harness):
    h = harness("streams.evolution_agent", window_size=4, gap_confidence=0.9, max_models_per_domain=12)
    weak = [{**_score("m", 5, True), "confidence": 0.1, "correctness": 0.0} for _ in range(3)]

    async def run():
        async with h.agent("evolution").test_context() as agent:
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
    window = h.app.tables[GAPS_TABLE]["5"]
    assert window["at"] == [0, 2] and window["value"]["traffic"] == 3
    assert window["value"]["spawned"] == 1 and window["value"]["pending"]


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
    h = harness("streams.evolution_agent", promote_min_n=3)
    student = _named(h, "student")
    seen: dict = {}

    async def run():
        async with h.agent("evolution").test_context() as agent:
            h.hold_acks = True
            task = asyncio.create_task(agent.put(h.rt.codec.encode("score", _score(student, 2, True))))
            for _ in range(2):
                await task
                task = asyncio.create_task(agent.put(h.rt.codec.encode("score", _score(student, 2, True))))
            await _hold_until_sent(h, "model_event")
            seen["held"] = h.app.tables[STATS_TABLE]["2"]["at"]
            await _release_until(h, lambda: h.app.tables[STATS_TABLE]["2"]["at"] == [0, 2])
            seen["released"] = h.app.tables[STATS_TABLE]["2"]["at"]
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert seen == {"held": [0, 1], "released": [0, 2]}


def test_gap_window_records_a_score_only_after_its_gap_and_spawn_are_acknowledged(harness):
    h = harness("streams.evolution_agent", window_size=4, gap_confidence=0.9, max_models_per_domain=12)
    weak = {**_score("m", 5, True), "confidence": 0.1, "correctness": 0.0}
    seen: dict = {}

    async def run():
        async with h.agent("evolution").test_context() as agent:
            await agent.put(h.rt.codec.encode("score", weak))
            h.hold_acks = True
            task = asyncio.create_task(agent.put(h.rt.codec.encode("score", weak)))  # opens the gap
            await _hold_until_sent(h, "gap")
            seen["held"] = h.app.tables[GAPS_TABLE]["5"]["at"]
            await _release_until(h, lambda: h.app.tables[GAPS_TABLE]["5"]["at"] == [0, 1])
            seen["released"] = h.app.tables[GAPS_TABLE]["5"]["at"]
            await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert seen == {"held": [0, 0], "released": [0, 1]}
    assert [len(h.of_kind(k)) for k in ("gap", "spawn", "model_event")] == [1, 1, 1]


def test_the_evolution_agent_follows_model_events_read_from_the_topic(harness):
    """rt.followers hands the agent every model event: one that made the student a teacher in domain 2 stops
    the promotions its record would otherwise earn (teachers are never promoted)."""
    from selfevolve.evolution import hierarchy as hier
    from selfevolve.flow.events import Event
    from streams.evolution_follow import follow

    h = harness("streams.evolution_agent", promote_min_n=3)
    student = _named(h, "student")
    follow(h.rt, Event("model_event", hier.event("promote", student, 2, "ta", "teacher", "operator", 0)))

    async def run():
        async with h.agent("evolution").test_context() as agent:
            for _ in range(4):
                await agent.put(h.rt.codec.encode("score", _score(student, 2, True)))
            await h.wait_for("model_event", 1, timeout=2)

    asyncio.run(run())
    assert h.of_kind("model_event") == []
    assert h.app.tables[STATS_TABLE]["2"]["at"] == [0, 3]


def test_the_sink_feeds_the_meta_learner_and_commits_only_after_its_strategy_is_acknowledged(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import streams.kafka_io
    from selfevolve.config import Settings
    from streams.metalearner import MetaLearnerHost
    from streams.runtime import Runtime
    from streams.sink import run_sink

    rt = Runtime.build(Settings(home=tmp_path, sink_batch_size=100, metalearn_every=40, metalearn_window=40,
                                cost_lambda=0.0))
    learner = MetaLearnerHost.attach(rt)
    stop, trail = asyncio.Event(), []
    msgs = [SimpleNamespace(topic=rt.topics.answers, partition=0, offset=i, key=b"t", value=rt.codec.encode("answer", {
        "query_id": f"q{i}", "tenant": "t", "model": "m", "answer": "a", "composite": 0.9 if i % 2 else 0.5,
        "cost_usd": 0.001, "strategy": "targeted" if i % 2 else "parallel", "domain": 0, "latency_ms": 1.0,
        "ts_ms": 1000 + i})) for i in range(40)]

    async def send(topic, kind, record, key):
        trail.append(("sent", kind, record["ts_ms"]))
        ack = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.2, lambda: (trail.append(("acked", kind)), ack.set_result(None)))
        return ack

    class Consumer:
        polls = 0

        async def getmany(self, timeout_ms, max_records):
            self.polls += 1
            if self.polls > 1:
                stop.set()
                return {}
            return {("tp", 0): msgs}

        async def commit(self, offsets):
            trail.append(("commit", offsets[("tp", 0)]))

        async def stop(self):
            pass

    class Store:
        rows: list = []

        def insert(self, kind, rows):
            self.rows += rows

        def query(self, sql):
            return (["c"], [(0,)]) if "count()" in sql else ([], [])

    async def consumer(*args, **kwargs):
        return Consumer()

    monkeypatch.setattr(streams.kafka_io, "committing_consumer", consumer)
    rt.send = send
    asyncio.run(run_sink(rt, Store(), stop, learner=learner))
    assert trail == [("sent", "strategy", 1039), ("acked", "strategy"), ("commit", 40)]
    assert (learner.state.theta_high, learner.state.answers) == (0.78, 40)
