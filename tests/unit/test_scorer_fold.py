"""The scorer fold: calls, fallbacks, escalation and one answer per query, deterministic, idempotent, restorable."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event
from selfevolve.flow.scorer import ScorerFold, ScorerState
from selfevolve.models.catalogue import Catalogue, ModelSpec
from selfevolve.routing import HYBRID, PARALLEL, Decision
from selfevolve.routing.history import Record
from selfevolve.wire.codec import Codec
from selfevolve.wire.records import decision_record, vector_of

MC = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"
SETTINGS = Settings(topic_prefix="u.")
CATALOGUE = Catalogue([ModelSpec("a", "replay", "student", 0, cost_per_call=0.001),
                       ModelSpec("b", "local", "ta", 1, cost_per_call=0.001),
                       ModelSpec("next", "replay", "teacher", 2, cost_per_call=0.01),
                       ModelSpec("top", "openai", "supervisor", 3, cost_per_call=0.05)])
CODEC = Codec.from_dir()
VEC = np.arange(4, dtype=np.float32) / 4


def fold(known=None, **kw) -> ScorerFold:
    return ScorerFold(SETTINGS, CATALOGUE, known, codec=CODEC, **kw)


def decision(qid="q1", tenant="t1", models=("a", "b"), strategy=PARALLEL, escalation=(), below=0.0,
             source="u.queries:0:1", vector=VEC, ts=1_000, metadata=None, **plan) -> dict:
    d = Decision(qid, tenant, MC, strategy, 0.7, tuple(models), tuple(escalation), below, 0.002, 0.06, None,
                 {"a": 0.7, "b": 0.7, "next": 0.8, "top": 0.95}, {"a": 0.001, "b": 0.001, "next": 0.01, "top": 0.05},
                 {"a": "next", "b": "next", "next": "top"}, "test", 0.8, 0.5, 0.1)
    d = replace(d, **plan)
    return decision_record(d, metadata if metadata is not None else {"sample_id": qid}, 1.0, ts, domain=3,
                           source=source, vector=vector)


def response(req: dict, answer="B", ok=True, ts=2_000, **changes) -> dict:
    return {"request_id": req["request_id"], "query_id": req["query_id"], "tenant": req["tenant"],
            "model": req["model"], "answer": answer if ok else "", "confidence": -1.0, "latency_ms": 1.0,
            "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.001, "ok": ok,
            "error": None if ok else "boom", "fallback_from": req["fallback_from"], "stage": req["stage"],
            "ts_ms": ts, **changes}


def ev(kind: str, record: dict, payload=None) -> Event:
    return Event(kind, record, payload=payload)


def run(f: ScorerFold, state: ScorerState, *events: Event):
    outs = []
    for e in events:
        state, more = f.step(state, e)
        outs += more
    return state, outs


def requests(outs):
    return [o.record for o in outs if o.kind == "inference_request"]


def frozen(state: ScorerState) -> str:
    return json.dumps(state.to_json(), sort_keys=True)


def shape(outs) -> list:
    """Outs compared whole: a history delivery's payload (the Verdict) too."""
    return [(o.kind, o.stage, o.key, o.record, o.payload) for o in outs]


def test_a_decision_sends_one_request_per_model_to_its_backend_at_the_decisions_time():
    f = fold()
    _, outs = f.step(f.initialize(), ev("route_decision", decision()))
    assert [(o.kind, o.stage, o.key) for o in outs] == [("inference_request", "inference-requests.replay", "t1/q1"),
                                                         ("inference_request", "inference-requests.local", "t1/q1")]
    assert [o.record["model"] for o in outs] == ["a", "b"]
    assert all(o.record["ts_ms"] == 1_000 and o.record["metadata"] == {"sample_id": "q1"} for o in outs)
    assert all(o.record["request_id"] == f"t1/q1:0:{o.record['model']}" for o in outs)


@pytest.mark.parametrize(("source", "copies"), [
    ("u.queries:0:1", ["answers"]),                          # the shared topic: admin's, no tenant copy
    ("u.queries.t1:0:1", ["answers", "answers.t1"]),         # asked on its own topic: its own copy too
    ("u.queries.other:0:1", ["answers"]),                    # another tenant's topic names not t1
    ("", ["answers"]),                                        # a decision written before sources
])
def test_the_last_response_gives_scores_the_answer_and_one_history_delivery_at_the_responses_time(source, copies):
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision(source=source)))
    reqs = requests(outs)
    state, outs = f.step(state, ev("inference_response", response(reqs[0], ts=1_500)))
    assert outs == [] and "t1/q1" in state.logs
    state, outs = f.step(state, ev("inference_response", response(reqs[1], ts=2_500)))
    scores = [o for o in outs if o.kind == "score"]
    answers = [o for o in outs if o.kind == "answer"]
    (history,) = [o for o in outs if o.kind == "history"]
    assert [o.kind for o in outs] == ["score", "score"] + ["answer"] * len(copies) + ["history"]
    assert {(o.stage, o.key, o.record["ts_ms"], o.record["domain"]) for o in scores} == {("scores", "3", 2_500, 3)}
    assert sum(o.record["winner"] for o in scores) == 1
    assert [o.stage for o in answers] == copies and all(o.key == "t1" for o in answers)
    a = answers[0].record
    assert (a["query_id"], a["tenant"], a["answer"], a["ts_ms"], a["latency_ms"]) == ("q1", "t1", "B", 2_500, 1_500)
    # The history record every serve worker folds: it travels on the history topic, so it must encode.
    assert (history.key, history.stage) == ("t1/q1", "history")
    h = CODEC.decode("history", CODEC.encode("history", history.record))
    assert (h["event"], h["query_id"], h["tenant"], h["ts_ms"], h["source"], h["domain"]) == (
        "delivery", "q1", "t1", 2_500, source, 3)
    assert (h["text"], h["winner"], h["answer"], h["strategy"]) == (MC, a["model"], "B", a["strategy"])
    assert h["costs"] == {"a": 0.001, "b": 0.001} and set(h["costs"]) == set(a["models_called"])
    np.testing.assert_array_equal(vector_of(h), VEC)
    assert (h["cached_from"], h["model"], h["quality"]) == ("", "", 0.0)
    # The Verdict rides along in memory only (Result.deliveries' outcomes); the topic carries the record.
    assert history.payload.query_id == "q1" and history.payload.winner == a["model"]
    assert history.payload.models_called == ("a", "b")
    assert not state.logs and list(state.answered) == ["t1/q1"] and state.answered["t1/q1"].source == source


@pytest.mark.parametrize("failing", [(), ("a",), ("b",), ("a", "b")])
def test_the_history_delivery_lists_every_called_model_at_its_cost_failures_too(failing):
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision()))
    pending = requests(outs)
    while pending:  # a failed call falls back to "next", which answers
        r = pending.pop(0)
        state, outs = f.step(state, ev("inference_response", response(r, ok=r["model"] not in failing,
                                                                      cost_usd=0.001 * len(r["model"]))))
        pending += requests(outs)
    (history,) = [o for o in outs if o.kind == "history"]
    (answer, *_) = [o.record for o in outs if o.kind == "answer"]
    assert set(history.record["costs"]) == set(answer["models_called"]) >= {"a", "b"}
    assert sum(history.record["costs"].values()) == pytest.approx(answer["cost_usd"])
    assert history.record["winner"] == answer["model"] and history.record["winner"] not in failing


def test_latency_runs_to_the_hosts_clock_when_it_gives_one():
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision()))
    state, _ = f.step(state, ev("inference_response", response(requests(outs)[0])))
    _, outs = f.step(state, ev("inference_response", response(requests(outs)[1]), payload={"now_ms": 9_000}))
    (a, *_) = [o.record for o in outs if o.kind == "answer"]
    assert a["latency_ms"] == 8_000 and a["ts_ms"] == 2_000  # the clock sets latency, never event time


def test_a_decision_without_a_vector_delivers_none_and_its_text_for_the_host_to_embed():
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision(models=("a",), vector=None)))
    _, outs = f.step(state, ev("inference_response", response(requests(outs)[0])))
    (history,) = [o for o in outs if o.kind == "history"]
    assert history.record["vector"] is None and history.record["text"] == MC  # the host embeds the text
    CODEC.encode("history", history.record)


def test_a_failed_call_falls_back_and_the_fallback_answers():
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision(models=("a",))))
    state, outs = f.step(state, ev("inference_response", response(requests(outs)[0], ok=False)))
    (fb,) = requests(outs)
    assert (fb["model"], fb["fallback_from"], fb["ts_ms"]) == ("next", "a", 1_000)
    assert [o.stage for o in outs] == ["inference-requests.replay"]
    _, outs = f.step(state, ev("inference_response", response(fb, ts=3_000)))
    (a, *_) = [o.record for o in outs if o.kind == "answer"]
    assert a["fallbacks"] == ["next"] and a["model"] == "next" and a["ts_ms"] == 3_000


def test_a_hybrid_disagreement_escalates():
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision(strategy=HYBRID, escalation=(("top",),),
                                                                       below=0.8)))
    a, b = requests(outs)
    state, _ = f.step(state, ev("inference_response", response(a, "A")))
    state, outs = f.step(state, ev("inference_response", response(b, "B")))
    (top,) = requests(outs)
    assert (top["model"], top["stage"]) == ("top", 1) and outs[0].stage == "inference-requests.openai"
    _, outs = f.step(state, ev("inference_response", response(top, "B")))
    assert [o.record["models_called"] for o in outs if o.kind == "answer"] == [["a", "b", "top"]]


def test_re_delivered_and_late_events_change_nothing():
    f = fold()
    rec = decision()
    state, outs = f.step(f.initialize(), ev("route_decision", rec))
    reqs = requests(outs)
    state, _ = f.step(state, ev("inference_response", response(reqs[0])))
    before = frozen(state)
    for again in (ev("route_decision", rec), ev("inference_response", response(reqs[0]))):
        state, outs = f.step(state, again)
        assert outs == [] and frozen(state) == before
    state, _ = f.step(state, ev("inference_response", response(reqs[1])))
    answered = frozen(state)
    for late in (ev("route_decision", rec), ev("inference_response", response(reqs[1])),
                 ev("inference_response", response(reqs[0], answer="C"))):
        state, outs = f.step(state, late)
        assert outs == [] and frozen(state) == answered


def test_a_reused_tenant_and_id_raises_open_answered_or_only_in_the_history():
    past = {}
    f = fold(known=lambda qid, tenant: past.get((tenant, qid)), done_keep=1)
    state, outs = f.step(f.initialize(), ev("route_decision", decision()))
    other = decision(source="u.queries:0:77")  # another query record, same (tenant, id)
    with pytest.raises(ValidationError, match="duplicate query id q1 for tenant t1"):
        f.step(state, ev("route_decision", other))
    for r in requests(outs):
        state, _ = f.step(state, ev("inference_response", response(r)))
    with pytest.raises(ValidationError, match="duplicate query id"):
        f.step(state, ev("route_decision", other))  # its answered marker knows the source
    state, outs = f.step(state, ev("route_decision", decision(qid="q2", models=("a",), source="u.queries:0:2")))
    state, _ = f.step(state, ev("inference_response", response(requests(outs)[0])))
    assert list(state.answered) == ["t1/q2"]  # q1's marker evicted: the history speaks for it now
    past[("t1", "q1")] = Record(query_id="q1", tenant="t1", source="u.queries:0:1")
    before = frozen(state)
    with pytest.raises(ValidationError, match="duplicate query id"):
        f.step(state, ev("route_decision", other))
    state, outs = f.step(state, ev("route_decision", decision()))  # its own decision again: already answered
    assert outs == [] and frozen(state) == before
    # Another tenant's q1 is another query.
    _, outs = f.step(state, ev("route_decision", decision(tenant="t2", source="u.queries:0:78")))
    assert {o.key for o in outs} == {"t2/q1"}


@pytest.mark.parametrize(("why", "make", "match"), [
    ("no decision", lambda reqs: ev("inference_response", response({**reqs[0], "query_id": "zz",
                                                                    "request_id": "t1/zz:0:a"})), "no call"),
    ("forged request id", lambda reqs: ev("inference_response", response({**reqs[0], "request_id": "x"})),
     "rejected"),
    ("uncalled model", lambda reqs: ev("inference_response", response({**reqs[0], "model": "top",
                                                                       "request_id": "t1/q1:0:top"})), "rejected"),
    ("plan not json", lambda reqs: ev("route_decision", {**decision(qid="q9"), "plan": "{no"}), "Expecting"),
    ("model not in catalogue", lambda reqs: ev("route_decision", decision(qid="q9", models=("ghost",))), "ghost"),
    ("bad vector", lambda reqs: ev("route_decision", {**decision(qid="q9"), "vector": b"\x00" * 5}), "float32"),
    ("unsendable metadata", lambda reqs: ev("route_decision", decision(qid="q9", metadata={"n": 1})),
     "does not fit its schema"),
    ("log over a changelog record", lambda reqs: ev("route_decision", decision(qid="q9", text="x" * 1_200_000)),
     "record limit"),
])
def test_a_step_that_raises_changes_nothing(why, make, match):
    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision()))
    before = frozen(state)
    arbiters = dict(state.arbiters)
    with pytest.raises(Exception, match=match):
        f.step(state, make(requests(outs)))
    assert frozen(state) == before and state.arbiters == arbiters, why


def test_a_forged_response_is_never_scored(monkeypatch):
    from selfevolve.scoring import arbiter

    f = fold()
    state, outs = f.step(f.initialize(), ev("route_decision", decision()))
    monkeypatch.setattr(arbiter, "score_responses", lambda *a, **k: pytest.fail("a forged response was scored"))
    with pytest.raises(ValidationError):
        f.step(state, ev("inference_response", response({**requests(outs)[0], "stage": 1})))


def test_answered_markers_are_bounded_oldest_out_and_their_keys_reported_changed():
    f = fold(done_keep=2)
    state = f.initialize()
    for i in range(4):
        state, outs = f.step(state, ev("route_decision", decision(qid=f"q{i}", models=("a",))))
        state, _, changed = f.step_logged(state, ev("inference_response", response(requests(outs)[0])))
        assert changed == [f"t1/q{i}"] + ([f"t1/q{i - 2}"] if i >= 2 else [])
    assert list(state.answered) == ["t1/q2", "t1/q3"] and not state.logs
    assert state.entry_json("t1/q0") is None and state.entry_json("t1/q3") == {"done": True, "source": "u.queries:0:1"}


def test_ignored_kinds_change_nothing():
    f = fold()
    state = f.initialize()
    assert f.step(state, ev("feedback", {"query_id": "q1"})) == (state, [])


# -- properties over random interleavings ---------------------------------------------------------------------

PLANS = [dict(models=("a",)), dict(models=("a", "b")), dict(models=("a", "b"), strategy=HYBRID,
                                                            escalation=(("top",),), below=0.8)]


@st.composite
def scenarios(draw):
    """A run of 1-3 queries: events delivered in a random order the topics allow (a query's responses after
    the request that asked for them), with random repeats, failures and answers. Returns the events."""
    f = fold()
    state = f.initialize()
    pending = [ev("route_decision", decision(qid=f"q{i}", source=f"u.queries:0:{i}", ts=1_000 * i,
                                             **draw(st.sampled_from(PLANS))))
               for i in range(draw(st.integers(1, 3)))]
    seen: list[Event] = []
    for _ in range(40):
        if not pending:
            break
        if seen and draw(st.integers(0, 5)) == 0:
            event = draw(st.sampled_from(seen))  # a re-delivery
        else:
            event = pending.pop(draw(st.integers(0, len(pending) - 1)))
        seen.append(event)
        state, outs = f.step(state, event)
        for r in requests(outs):
            ok = draw(st.integers(0, 4)) > 0
            pending.append(ev("inference_response", response(r, draw(st.sampled_from("ABCD")), ok=ok,
                                                             ts=r["ts_ms"] + draw(st.integers(1, 500)))))
    return seen


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_the_same_events_in_the_same_order_give_the_same_outputs(events):
    runs = []
    for _ in range(2):
        f = fold()
        state, outs = run(f, f.initialize(), *events)
        runs.append((shape(outs), frozen(state)))
    assert runs[0] == runs[1]


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_each_query_is_answered_once_and_a_repeat_changes_nothing(events):
    f = fold()
    state, answers, seen = f.initialize(), [], []
    for e in events:
        before = frozen(state)
        state, outs = f.step(state, e)
        if any(e == s for s in seen):
            assert outs == [] and frozen(state) == before
        seen.append(e)
        answers += [o.record["query_id"] for o in outs if o.kind == "answer"]
    assert len(answers) == len(set(answers))


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.data())
def test_a_state_restored_from_json_gives_the_same_future_outputs(events, data):
    cut = data.draw(st.integers(0, len(events)))
    f = fold()
    state, _ = run(f, f.initialize(), *events[:cut])
    restored = ScorerState.from_json(json.loads(json.dumps(state.to_json())))
    assert frozen(restored) == frozen(state) and restored == state
    fresh = fold()  # a restarted worker: no arbiter state cached, rebuilt from the logs
    live, outs = run(f, state, *events[cut:])
    back, outs_back = run(fresh, restored, *events[cut:])
    assert shape(outs_back) == shape(outs) and frozen(back) == frozen(live)
