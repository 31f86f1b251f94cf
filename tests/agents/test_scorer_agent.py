"""The scorer: a decision fans out calls; responses fold into one answer; duplicates and restarts are safe."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from types import SimpleNamespace

from selfevolve.flow.events import Event
from selfevolve.routing.history import Record
from selfevolve.wire.records import decision_from_record, vector_of
from streams.scorer import Scorer, score_batch

MAMMAL = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"
_offsets = itertools.count()


def _decision(h, qid: str, text: str, **changes):
    """What the router fold decides for a query of tenant t1 read on the shared queries topic."""
    serve = h.rt.serving()
    query = {"query_id": qid, "text": text, "tenant": "t1", "metadata": {"sample_id": qid},
             "ts_ms": int(time.time() * 1000)}
    _, (out,) = serve.router_fold.step(serve.router_state,
                                       Event("query", query, h.rt.topics.queries, (0, next(_offsets))))
    record = {**out.record, **changes}
    return decision_from_record(record), record


def _response(req: dict, answer: str, ok: bool = True) -> dict:
    return {"request_id": req["request_id"], "query_id": req["query_id"], "tenant": req["tenant"],
            "model": req["model"], "answer": answer, "confidence": -1.0, "latency_ms": 1.0,
            "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.001, "ok": ok,
            "error": None if ok else "boom", "fallback_from": req["fallback_from"], "stage": req["stage"],
            "ts_ms": 1}


def _fold_history(h) -> list[dict]:
    """Fold the history records the scorer sent into the serve state, as every worker's history follower
    does (skipping one that no fold accepts); returns them."""
    serve = h.rt.serving()
    sent = h.of_kind("history")
    for record in sent[serve.offset:]:
        try:
            serve.apply(Event("history", record, h.rt.topics.history, (0, serve.offset)))
        except Exception:  # noqa: BLE001, S110 - skipped alike by every replica
            pass
        serve.offset += 1
    return sent


class Feed:
    """Hands the scorer batches of encoded records, as one poll of its consumer would."""

    def __init__(self, h, scorer: Scorer | None = None):
        self.h, self.offset = h, 0
        self.scorer = scorer or Scorer(h.rt, h.rt.serving())

    async def put(self, *items: tuple[str, dict], partition: int = 0) -> None:
        msgs = []
        for kind, record in items:
            topic = self.h.rt.topics.route_decisions if kind == "route_decision" else self.h.rt.topics.inference_responses
            msgs.append(SimpleNamespace(topic=topic, partition=partition, offset=self.offset, key=None,
                                        value=self.h.rt.codec.encode(kind, record)))
            self.offset += 1
        await score_batch(self.h.rt, self.scorer, msgs)


def test_decision_calls_then_one_answer_even_with_duplicate_responses(harness):
    h = harness()

    async def run():
        feed = Feed(h)
        d, rec = _decision(h, "q-1", MAMMAL)
        await feed.put(("route_decision", rec))
        reqs = h.of_kind("inference_request")
        assert {r["model"] for r in reqs} == set(d.models)
        assert all(r["metadata"] == {"sample_id": "q-1"} for r in reqs)
        await feed.put(*[("inference_response", _response(r, "B")) for r in reqs])
        await feed.put(("inference_response", _response(reqs[0], "B")), ("route_decision", rec))  # re-delivered

    asyncio.run(run())
    answers = h.of_kind("answer")
    assert len(answers) == 1
    a = answers[0]
    assert a["query_id"] == "q-1" and a["answer"] == "B" and a["tenant"] == "t1"
    assert set(a["models_called"]) == {r["model"] for r in h.of_kind("inference_request")}
    assert sum(s["winner"] for s in h.of_kind("score")) == 1
    # One delivery on the history topic, keyed by the query; delivered queries join every replica's history.
    assert [(t, k) for t, kind, _, k in h.sent if kind == "history"] == [(h.rt.topics.history, "t1/q-1")]
    assert h.rt.serving().history.get("q-1", "t1") is None  # not before the follower folds it
    (delivery,) = _fold_history(h)
    assert (delivery["event"], delivery["text"], delivery["winner"]) == ("delivery", MAMMAL, a["model"])
    past = h.rt.serving().history.get("q-1", "t1")
    assert past is not None and past.winner == a["model"] and past.source.startswith(h.rt.topics.queries)


def test_a_decision_without_a_vector_is_embedded_again_at_delivery(harness):
    """A decision written before v4 carries no vector: its query joins the history all the same, with the
    vector its text embeds to."""
    h = harness()
    serve = h.rt.serving()

    async def run():
        feed = Feed(h)
        _, rec = _decision(h, "q-old", MAMMAL, vector=b"")
        await feed.put(("route_decision", rec))
        await feed.put(*[("inference_response", _response(r, "B")) for r in h.of_kind("inference_request")])

    asyncio.run(run())
    assert len(h.of_kind("answer")) == 1 and not h.of_kind("dead_letter")
    (delivery,) = _fold_history(h)
    assert (vector_of(delivery) == serve.embedder.encode([MAMMAL])[0]).all()
    assert serve.history.get("q-old", "t1") is not None
    (found, sim), *_ = serve.history.search(serve.embedder.encode([MAMMAL])[0], 1)
    assert found.query_id == "q-old" and sim > 0.99


def test_a_delivery_that_cannot_be_embedded_again_still_sends_its_answer_and_no_replica_keeps_it(harness, monkeypatch):
    h = harness()
    serve = h.rt.serving()

    async def run():
        feed = Feed(h)
        _, rec = _decision(h, "q-lost", MAMMAL, vector=b"")
        await feed.put(("route_decision", rec))
        monkeypatch.setattr(serve.embedder, "encode", lambda texts: 1 / 0)
        await feed.put(*[("inference_response", _response(r, "B")) for r in h.of_kind("inference_request")])

    asyncio.run(run())
    assert [a["query_id"] for a in h.of_kind("answer")] == ["q-lost"]
    (delivery,) = _fold_history(h)
    assert delivery["vector"] is None  # every replica skips it alike
    assert serve.history.get("q-lost", "t1") is None and serve.offset == 1


def test_failed_backend_falls_back_to_the_next_tier(harness):
    h = harness()
    text = "Write a haiku about rain."
    serve = h.rt.serving()
    cheap = serve.catalogue.by_role("student")[0].name
    # A near-identical past query that the cheap student got right makes the route targeted.
    for i in range(5):
        serve.history.add(serve.embedder.encode([text])[0],
                          Record(query_id=f"past-{i}", costs={cheap: 1e-5}, quality={cheap: 1.0}, winner=cheap))

    async def run():
        feed = Feed(h)
        d, rec = _decision(h, "q-2", text)
        await feed.put(("route_decision", rec))
        reqs = h.of_kind("inference_request")
        candidates = [r for r in reqs if d.fallbacks.get(r["model"]) not in (None, *d.models)]
        assert candidates, f"no call in {d.strategy} {d.models} can fall back"
        failing = candidates[0]
        await feed.put(*[("inference_response", _response(r, "x", ok=r is not failing)) for r in reqs])
        fb = [r for r in h.of_kind("inference_request") if r["fallback_from"] == failing["model"]]
        assert fb, "no fallback request was sent"
        await feed.put(("inference_response", _response(fb[0], "Soft rain on the roof")))

    asyncio.run(run())
    (a,) = h.of_kind("answer")
    assert a["fallbacks"], "the answer must record the fallback"


def test_changelog_is_written_only_after_the_broker_acknowledges_the_answer(harness):
    """A crash before the acknowledgement must re-deliver the step, so the changelog may not say done yet."""
    h = harness()

    async def run():
        feed = Feed(h)
        _, rec = _decision(h, "q-ack", MAMMAL)
        await feed.put(("route_decision", rec))
        reqs = h.of_kind("inference_request")
        h.hold_acks = True
        logged = len(h.raw)
        task = asyncio.create_task(feed.put(*[("inference_response", _response(r, "B")) for r in reqs]))
        for _ in range(200):
            if h.of_kind("answer"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        before = h.raw[logged:]
        h.release_acks()
        for _ in range(200):
            if len(h.raw) > logged:
                break
            await asyncio.sleep(0.01)
        h.release_acks()  # the changelog write's own acknowledgement
        await asyncio.wait_for(task, 10)
        return before, h.raw[logged:]

    before, after = asyncio.run(run())
    assert h.of_kind("answer"), "the answer was sent"
    assert before == [], "the changelog was written before the answer was acknowledged"
    assert [json.loads(v).get("done") for _, k, v, _ in after if k == b"t1/q-ack"] == [True]


def test_a_restarted_scorer_resumes_from_its_changelog(harness):
    """A new scorer rebuilt from the changelog finishes a half-answered query and ignores what it had seen."""
    h = harness()

    async def run():
        first = Feed(h)
        d, rec = _decision(h, "q-r", MAMMAL)
        await first.put(("route_decision", rec), partition=2)
        reqs = h.of_kind("inference_request")
        assert len(reqs) >= 2, f"{d.strategy} called {d.models}: the test needs two calls"
        await first.put(("inference_response", _response(reqs[0], "B")), partition=2)
        # The changelog is all that survives a crash: a fresh scorer starts from its records.
        second = Feed(h, Scorer(h.rt, h.rt.serving()))
        second.offset = first.offset
        logged: dict[str, dict] = {}
        for topic, key, value, partition in h.raw:  # what a restore reads: the last write per key
            logged.pop(key.decode(), None)
            if value is not None:
                logged[key.decode()] = json.loads(value)
        second.scorer.load(2, logged)
        # Re-delivered after the crash: the decision and the first response (already logged), then the rest.
        await second.put(("route_decision", rec), ("inference_response", _response(reqs[0], "B")), partition=2)
        assert len(h.of_kind("inference_request")) == len(reqs), "a seen decision was routed again"
        await second.put(*[("inference_response", _response(r, "B")) for r in reqs[1:]], partition=2)

    asyncio.run(run())
    (a,) = h.of_kind("answer")
    assert a["query_id"] == "q-r" and set(a["models_called"]) == {r["model"] for r in h.of_kind("inference_request")}
    assert all(p == 2 for _, _, _, p in h.raw), "a key's changelog lives in its input's partition"


def test_undecodable_event_goes_to_dead_letter_and_the_batch_goes_on(harness):
    h = harness()

    async def run():
        feed = Feed(h)
        _, rec = _decision(h, "q-d", MAMMAL)
        bad = SimpleNamespace(topic=h.rt.topics.inference_responses, partition=0, offset=99, key=b"q-d",
                              value=b"\x00not avro")
        good = SimpleNamespace(topic=h.rt.topics.route_decisions, partition=0, offset=100, key=None,
                               value=h.rt.codec.encode("route_decision", rec))
        await score_batch(h.rt, feed.scorer, [bad, good])

    asyncio.run(run())
    (dl,) = h.of_kind("dead_letter")
    assert dl["offset"] == 99 and dl["reason"]
    assert h.of_kind("inference_request"), "the valid decision after it was still scored"


def test_answered_markers_are_bounded_and_tombstoned(harness):
    """Only the newest scorer_done_keep answered queries keep a marker; older ones leave with a tombstone."""
    h = harness(scorer_done_keep=1)

    async def run():
        feed = Feed(h)
        for qid in ("q-old", "q-new"):
            _, rec = _decision(h, qid, MAMMAL)
            await feed.put(("route_decision", rec))
            reqs = [r for r in h.of_kind("inference_request") if r["query_id"] == qid]
            await feed.put(*[("inference_response", _response(r, "B")) for r in reqs])
        return feed.scorer

    scorer = asyncio.run(run())
    assert {a["query_id"] for a in h.of_kind("answer")} == {"q-old", "q-new"}
    state = scorer.states[0]
    assert list(state.answered) == ["t1/q-new"] and not state.logs  # keyed by (tenant, query id)
    assert state.entry_json("t1/q-old") is None and state.entry_json("t1/q-new")["done"] is True
    assert (h.rt.topics.prefix + "scorer-state-changelog", b"t1/q-old", None, 0) in h.raw, "no tombstone for q-old"


CODE_Q = "Write a python function add(a, b) that returns a + b."


def test_a_batchs_code_answers_are_checked_together_before_scoring(harness, monkeypatch):
    """The scorer hands every code answer of a batch to run_many at once, whether the question's decision
    came in the same batch or an earlier one; answers to other questions are not run."""
    from streams import scorer as scorer_mod

    calls: list[list[str]] = []
    real = scorer_mod.checkers.run_many
    monkeypatch.setattr(scorer_mod.checkers, "run_many",
                        lambda answers, **kw: calls.append(list(answers)) or real(answers, **kw))
    h = harness()

    async def run():
        feed = Feed(h)
        _, code_rec = _decision(h, "c-1", CODE_Q)
        _, choice_rec = _decision(h, "m-1", MAMMAL)
        await feed.put(("route_decision", code_rec), ("route_decision", choice_rec))
        reqs = h.of_kind("inference_request")
        code = [r for r in reqs if r["query_id"] == "c-1"]
        answers = [f"```python\ndef add(a, b):\n    return a + b + {i}\n```" for i in range(len(code))]
        await feed.put(*[("inference_response", _response(r, a)) for r, a in zip(code, answers)],
                       *[("inference_response", _response(r, "B")) for r in reqs if r["query_id"] == "m-1"])
        return answers

    answers = asyncio.run(run())
    assert calls == [answers]
