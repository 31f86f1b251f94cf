"""Tenant isolation in the router, the scorer and the feedback task, without a broker: (tenant, id) is a
query's identity, a tenant's topic speaks only for that tenant, and feedback comes only from the owner."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from selfevolve.flow.events import Event
from streams.feedback import feedback_batch
from streams.router import route_batch
from streams.scorer import Scorer, score_batch

MAMMAL = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"
PLANET = "Which planet is largest?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth\nAnswer:"


def _msg(topic: str, offset: int, value: bytes, partition: int = 0):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=None, value=value)


def _query(h, topic: str, offset: int, qid: str, tenant: str, text: str = MAMMAL):
    return _msg(topic, offset, h.rt.codec.encode("query", {"query_id": qid, "text": text, "tenant": tenant,
                                                           "metadata": {"sample_id": qid}, "ts_ms": 1}))


def _response(req: dict, answer: str) -> dict:
    return {"request_id": req["request_id"], "query_id": req["query_id"], "tenant": req["tenant"],
            "model": req["model"], "answer": answer, "confidence": -1.0, "latency_ms": 1.0, "prompt_tokens": 10,
            "completion_tokens": 2, "cost_usd": 0.001, "ok": True, "error": None,
            "fallback_from": req["fallback_from"], "stage": req["stage"], "ts_ms": 1}


class Pipeline:
    """Routes query messages, then feeds the decisions and every answer's responses through one scorer."""

    def __init__(self, h):
        self.h, self.offset = h, 0
        self.scorer = Scorer(h.rt, h.rt.serving())

    async def route(self, *msgs) -> list[tuple[dict, str]]:
        before = len(self.h.sent)
        await route_batch(self.h.rt, self.h.rt.serving(), list(msgs))
        return [(r, key) for _, kind, r, key in self.h.sent[before:] if kind == "route_decision"]

    async def score(self, kind: str, *records) -> None:
        topic = self.h.rt.topics.route_decisions if kind == "route_decision" else self.h.rt.topics.inference_responses
        msgs = []
        for r in records:
            msgs.append(_msg(topic, self.offset, self.h.rt.codec.encode(kind, r)))
            self.offset += 1
        await score_batch(self.h.rt, self.scorer, msgs)

    async def answer_all(self) -> None:
        """Respond "B" to every request not answered yet."""
        reqs = [r for r in self.h.of_kind("inference_request") if r["request_id"] not in self.responded]
        self.responded.update(r["request_id"] for r in reqs)
        await self.score("inference_response", *[_response(r, "B") for r in reqs])

    responded: set = set()


def test_a_query_whose_tenant_is_not_its_topics_is_dead_lettered(harness):
    h = harness("streams.router")
    t = h.rt.topics

    async def run():
        p = Pipeline(h)
        return await p.route(_query(h, t.queries_for("acme"), 0, "q1", "evil"),
                             _query(h, t.queries_for("acme"), 1, "q2", "acme"),
                             _query(h, t.queries, 0, "q3", "Not A Tenant"),
                             _query(h, t.queries, 1, "q4", "evil"))  # the shared topic is admin's: trusted

    decisions = asyncio.run(run())
    letters = h.of_kind("dead_letter")
    assert len(letters) == 2, letters
    mismatch = next(d for d in letters if d["offset"] == 0 and d["source_topic"] == t.queries_for("acme"))
    assert "tenant mismatch" in mismatch["reason"] and "'evil'" in mismatch["reason"]
    assert any("invalid tenant name" in d["reason"] for d in letters)
    assert [(d["query_id"], d["tenant"], key) for d, key in decisions] == [("q2", "acme", "acme/q2"),
                                                                          ("q4", "evil", "evil/q4")]
    assert decisions[0][0]["source"] == f"{t.queries_for('acme')}:0:1"


def test_two_tenants_with_the_same_id_are_both_answered_each_on_its_own_topic(harness):
    h = harness()
    t = h.rt.topics

    async def run():
        p = Pipeline(h)
        p.responded = set()
        decisions = await p.route(_query(h, t.queries_for("a"), 0, "same", "a", MAMMAL),
                                  _query(h, t.queries_for("b"), 0, "same", "b", PLANET))
        await p.score("route_decision", *[d for d, _ in decisions])
        await p.answer_all()
        return decisions

    decisions = asyncio.run(run())
    assert [key for _, key in decisions] == ["a/same", "b/same"]
    assert not h.of_kind("dead_letter")
    answers = [(topic, r["tenant"], r["query_id"]) for topic, kind, r, _ in h.sent if kind == "answer"]
    assert sorted(answers) == sorted([(t.answers, "a", "same"), (t.answers_for("a"), "a", "same"),
                                      (t.answers, "b", "same"), (t.answers_for("b"), "b", "same")])
    reqs = h.of_kind("inference_request")
    assert {r["tenant"] for r in reqs} == {"a", "b"} and len({r["request_id"] for r in reqs}) == len(reqs)
    keys = {key for topic, kind, _, key in h.sent if kind == "inference_request"}
    assert keys == {"a/same", "b/same"}, "requests are keyed by the query's (tenant, id), like its decision"
    assert {s["tenant"] for s in h.of_kind("score")} == {"a", "b"}
    serve = h.rt.serving()
    for record in h.of_kind("history"):  # as the history follower folds the topic
        serve.apply(Event("history", record))
    assert serve.history.get("same", "a") is not None and serve.history.get("same", "b") is not None


def test_a_reused_id_is_dead_lettered_and_the_first_query_answered_once(harness):
    h = harness()
    t = h.rt.topics

    async def run():
        p = Pipeline(h)
        p.responded = set()
        first, in_flight = await p.route(_query(h, t.queries_for("b"), 0, "q1", "b", MAMMAL),
                                         _query(h, t.queries_for("b"), 1, "q1", "b", PLANET))
        await p.score("route_decision", first[0])
        await p.score("route_decision", in_flight[0], first[0])  # a reuse while in flight; a re-delivery
        await p.answer_all()
        (late,) = await p.route(_query(h, t.queries_for("b"), 2, "q1", "b", PLANET))
        await p.score("route_decision", late[0], first[0])  # a reuse after the answer; a re-delivery

    asyncio.run(run())
    letters = h.of_kind("dead_letter")
    assert len(letters) == 2, letters
    assert all("duplicate query id q1 for tenant b" in d["reason"] for d in letters)
    assert all(d["source_topic"] == t.route_decisions for d in letters)
    answers = [r for topic, kind, r, _ in h.sent if kind == "answer" and topic == t.answers_for("b")]
    assert len(answers) == 1 and answers[0]["query_id"] == "q1"
    assert len(h.of_kind("answer")) == 2  # that one answer, also on the internal answers topic


def test_feedback_comes_only_from_the_tenant_that_owns_the_query(harness):
    import numpy as np

    from selfevolve.routing.history import Record

    h = harness()
    t = h.rt.topics
    serve = h.rt.serving()
    for tenant in ("a", "b"):
        serve.history.add(np.ones(serve.history.dim, np.float32), Record("qa" if tenant == "a" else "qb", tenant=tenant,
                                                             costs={"m1": 0.1}, quality={"m1": None}))

    def fb(qid, tenant, quality):
        return h.rt.codec.encode("feedback", {"query_id": qid, "tenant": tenant, "model": "m1", "quality": quality,
                                              "source": "user", "ts_ms": 1})

    asyncio.run(feedback_batch(h.rt, serve, [
        _msg(t.feedback_for("b"), 0, fb("qa", "b", 0.0)),   # B on A's query: B owns no qa
        _msg(t.feedback_for("b"), 1, fb("qa", "a", 0.0)),   # B claiming to be A
        _msg(t.feedback_for("b"), 2, fb("qb", "b", 1.0)),   # B on its own query
        _msg(t.feedback_for("a"), 0, b"\x00junk"),
        _msg(t.feedback, 0, fb("qa", "a", 0.5)),            # the shared topic: admin tooling, trusted
    ]))
    letters = sorted(h.of_kind("dead_letter"), key=lambda d: (d["source_topic"], d["offset"]))
    assert [(d["source_topic"], d["offset"]) for d in letters] == [(t.feedback_for("a"), 0),
                                                                  (t.feedback_for("b"), 0), (t.feedback_for("b"), 1)]
    assert "feedback for a query tenant b does not own" in letters[1]["reason"]
    assert "tenant mismatch" in letters[2]["reason"]
    # The accepted verdicts go to the history topic, keyed by their query; every replica folds them.
    accepted = [(key, r) for _, kind, r, key in h.sent if kind == "history"]
    assert [(key, r["event"], r["quality"]) for key, r in accepted] == [("b/qb", "feedback", 1.0),
                                                                        ("a/qa", "feedback", 0.5)]
    for _, r in accepted:
        serve.apply(Event("history", r))
    assert serve.history.get("qa", "a").quality == {"m1": 0.5}
    assert serve.history.get("qb", "b").quality == {"m1": 1.0}
