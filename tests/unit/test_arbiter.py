"""Arbiter: calls, cascade escalation, fallback on failure, verdict; gold never decides the winner."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.scoring import arbiter
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.config import Settings
from selfevolve.data.routerbench import Dataset, Sample
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.routing.history import Record
from selfevolve.routing import HYBRID, PARALLEL, TARGETED, Decision, Router

MC = "Pick.\nA) x\nB) y\nAnswer:"


def _at(sim: float, base: np.ndarray, seed: int = 1) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(base.size).astype(np.float32)
    w -= (w @ base) * base
    w /= np.linalg.norm(w)
    return (sim * base + np.sqrt(1 - sim**2) * w).astype(np.float32)


def _decision(strategy, models, escalation=(), below=0.0, budget=None, fallbacks=None):
    est = {"a": 0.7, "b": 0.7, "top": 0.95, "next": 0.8}
    costs = {"a": 0.001, "b": 0.001, "top": 0.05, "next": 0.01}
    return Decision("q", "t", MC, strategy, 0.7, tuple(models), tuple(escalation), below,
                    0.002, 0.052, budget, est, costs, fallbacks or {"a": "next", "b": "next", "next": "top"},
                    "test", 0.8, 0.5, 0.1)


def _resp(model, answer, ok=True, cost=0.001, stage=0):
    return arbiter.Response("q", model, answer, ok, cost, stage)


def test_targeted_single_call_gives_a_verdict():
    s, out = arbiter.start(_decision(TARGETED, ["a"]))
    assert out == [arbiter.Call("q", "a", 0)]
    s, out = arbiter.step(s, _resp("a", "B"))
    assert isinstance(out[-1], arbiter.Verdict) and out[-1].winner == "a" and out[-1].answer == "B"


def test_hybrid_agreement_stops_at_the_cheap_stage():
    s, _ = arbiter.start(_decision(HYBRID, ["a", "b"], [("top",)], below=0.8))
    s, out = arbiter.step(s, _resp("a", "A"))
    assert out == []
    s, out = arbiter.step(s, _resp("b", "A"))
    v = out[-1]
    assert v.models_called == ("a", "b") and v.stages == 1 and v.cost == pytest.approx(0.002)


def test_hybrid_disagreement_escalates_and_the_top_model_settles_it():
    s, _ = arbiter.start(_decision(HYBRID, ["a", "b"], [("top",)], below=0.8))
    s, _ = arbiter.step(s, _resp("a", "A"))
    s, out = arbiter.step(s, _resp("b", "B"))
    assert out == [arbiter.Call("q", "top", 1)]
    s, out = arbiter.step(s, _resp("top", "B", cost=0.05, stage=1))
    v = out[-1]
    assert v.winner in {"b", "top"} and v.answer == "B" and v.stages == 2
    assert v.cost == pytest.approx(0.052) and set(v.model_costs) == {"a", "b", "top"}


def test_escalation_respects_the_budget():
    s, _ = arbiter.start(_decision(HYBRID, ["a", "b"], [("top",)], below=0.99, budget=0.01))
    s, _ = arbiter.step(s, _resp("a", "A"))
    s, out = arbiter.step(s, _resp("b", "B"))
    assert isinstance(out[-1], arbiter.Verdict) and "top" not in out[-1].models_called


def test_failed_call_falls_back_to_the_next_tier():
    s, _ = arbiter.start(_decision(TARGETED, ["a"]))
    s, out = arbiter.step(s, _resp("a", "", ok=False))
    assert out == [arbiter.Call("q", "next", 0, fallback_from="a")]
    s, out = arbiter.step(s, _resp("next", "A", cost=0.01))
    assert out[-1].winner == "next" and out[-1].fallbacks == ("next",)


def test_duplicate_and_foreign_responses_change_nothing_and_are_rejected():
    s, _ = arbiter.start(_decision(PARALLEL, ["a", "b"]))
    s, _ = arbiter.step(s, _resp("a", "A"))
    s2, out = arbiter.step(s, _resp("a", "B"))
    s3, out3 = arbiter.step(s2, _resp("zzz", "B"))
    assert s2 == s == s3
    assert [type(o) for o in out + out3] == [arbiter.Rejected, arbiter.Rejected]
    assert "duplicate" in out[0].reason and out3[0].model == "zzz"


def _rid(model, stage=0, qid="q", tenant="t"):
    return arbiter.request_id(tenant, arbiter.Call(qid, model, stage))


def _forged(model, answer, stage=0, request_id=None, qid="q", ok=True):
    return arbiter.Response(qid, model, answer, ok, 0.001, stage, request_id=request_id)


@pytest.mark.parametrize("forged, why", [
    (_forged("b", "A", request_id=_rid("b")), "model 'b'"),  # a model never called
    (_forged("a", "A", stage=1, request_id=_rid("a", 1)), "stage 1"),  # a stage not reached
    (_forged("a", "A", request_id=_rid("b")), "request id"),  # the id of another call
    (_forged("a", "A", request_id="q:0:a"), "request id"),  # an id without the tenant
    (_forged("a", "A", request_id=_rid("a", tenant="other")), "request id"),  # another tenant's id
    (_forged("a", "A", qid="q2", request_id=_rid("a", qid="q2")), "query"),  # another query's response
])
def test_a_response_to_no_call_made_is_rejected_and_changes_nothing(forged, why):
    s, calls = arbiter.start(_decision(TARGETED, ["a"]))
    assert [c.model for c in calls] == ["a"]
    s2, out = arbiter.step(s, forged)
    assert s2 == s and len(out) == 1 and isinstance(out[0], arbiter.Rejected) and why in out[0].reason
    assert out[0].request_id == forged.request_id
    s3, out = arbiter.step(s2, _forged("a", "B", request_id=_rid("a")))  # the real response still counts
    assert isinstance(out[-1], arbiter.Verdict) and out[-1].answer == "B"


def test_responses_before_the_decision_or_after_the_verdict_are_rejected():
    s0 = arbiter.State()
    s1, out = arbiter.step(s0, _forged("a", "A", request_id=_rid("a")))
    assert s1 == s0 and "no decision" in out[0].reason
    s, _ = arbiter.start(_decision(TARGETED, ["a"]))
    s, _ = arbiter.step(s, _forged("a", "A", request_id=_rid("a")))
    assert s.done
    s2, out = arbiter.step(s, _forged("a", "B", request_id=_rid("a")))
    assert s2 == s and "already answered" in out[0].reason


def test_a_second_decision_does_not_reset_the_calls():
    s, _ = arbiter.start(_decision(TARGETED, ["a"]))
    s2, out = arbiter.step(s, _decision(PARALLEL, ["a", "b", "top"]))
    assert s2 == s and out == []


def test_awaited_lists_exactly_the_open_calls():
    s, _ = arbiter.start(_decision(HYBRID, ["a", "b"], [("top",)], below=0.8))
    assert arbiter.awaited(s) == {_rid("a"): "a", _rid("b"): "b"}
    s, _ = arbiter.step(s, _resp("a", "A"))
    s, out = arbiter.step(s, _resp("b", "B"))
    assert arbiter.awaited(s) == {_rid("top", 1): "top"} and out == [arbiter.Call("q", "top", 1)]


def test_the_request_ids_sent_are_the_ones_the_arbiter_awaits():
    """wire.request_record names each request as the arbiter expects it back: one format in two places."""
    from selfevolve.wire.records import request_record

    d = _decision(HYBRID, ["a", "b"])
    s, calls = arbiter.start(d)
    sent = {request_record(c, d, {}, 0)["request_id"] for c in calls}
    assert sent == set(arbiter.awaited(s))


CODE_Q = "Write a python function f() that returns 1."


def test_a_rejected_response_s_code_is_never_run(monkeypatch, tmp_path):
    """Only a response to an awaited call is scored, so only its code reaches the sandbox."""
    from selfevolve.scoring import checkers

    ran: list[str] = []
    monkeypatch.setattr(checkers, "run_code", lambda answer, *a, **k: ran.append(answer) or checkers.CodeCheck(
        True, True, 1))
    d = Decision("q", "t", CODE_Q, TARGETED, 0.7, ("a",), (), 0.0, 0.002, 0.052, None, {"a": 0.7}, {"a": 0.001},
                 {}, "test", 0.8, 0.5, 0.1)
    s, _ = arbiter.start(d)
    evil = "```python\nopen('/tmp/pwned', 'w')\nassert True\n```"
    for forged in (_forged("b", evil, request_id=_rid("b")), _forged("a", evil, request_id="q:0:a"),
                   _forged("a", evil, stage=2, request_id=_rid("a", 2))):
        s, out = arbiter.step(s, forged)
        assert isinstance(out[0], arbiter.Rejected)
    assert ran == []
    good = "```python\ndef f():\n    return 1\nassert f() == 1\n```"
    s, out = arbiter.step(s, _forged("a", good, request_id=_rid("a")))
    assert isinstance(out[-1], arbiter.Verdict) and ran == [good]


MODELS = ["m0", "m1", "m2", "sup"]
CAT = Catalogue([ModelSpec(m, "replay", r, i, cost_per_call=c) for i, (m, r, c) in enumerate(
    [("m0", Role.STUDENT, 0.001), ("m1", Role.TA, 0.002), ("m2", Role.TEACHER, 0.01), ("sup", Role.SUPERVISOR, 0.05)])])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["A", "B", "maybe", ""]), min_size=4, max_size=4),
       st.permutations([1.0, 0.0, 1.0, 0.0]), st.permutations([1.0, 0.0, 1.0, 0.0]),
       st.sampled_from([0.3, 0.65, 0.95]))
def test_permuting_gold_labels_changes_no_decision(answers, gold1, gold2, sim):
    """The winner, the calls and the cost depend on answers and history, never on this query's gold."""
    answers = dict(zip(MODELS, answers))
    base = np.zeros(384, np.float32)
    base[0] = 1
    outcomes = []
    for gold in (gold1, gold2):
        ds = Dataset((Sample("x", "t", "test", MC, answers, {m: 0.001 * (i + 1) for i, m in enumerate(MODELS)},
                             dict(zip(MODELS, gold))),), tuple(MODELS))
        # The shipped serve folds through the in-memory driver, gold verdicts posted after delivery.
        flow = dataflow.build(Settings(cost_lambda=0.1), CAT, lambda texts: np.stack([_at(sim, base)] * len(texts)),
                              roles=(dataflow.SERVE,), dim=384)
        rng = np.random.default_rng(0)
        for i in range(20):
            flow.history.add(_at(0.99, base, i + 5), Record(f"p{i}", costs={m: 0.001 for m in MODELS},
                                                             quality={m: float(rng.random() < 0.7) for m in MODELS}))
        q = {"query_id": "x", "text": MC, "tenant": "default", "metadata": {"sample_id": "x"}, "ts_ms": 0}

        def verdicts(answer, gold=dict(zip(MODELS, gold))):
            return [{"query_id": "x", "tenant": "default", "model": m, "quality": gold[m], "source": "gold",
                     "ts_ms": 1} for m in answer["models_called"]]

        r = driver.replay(flow.driver(recorded(ds, CAT)), [q], verdicts, window=1)
        d, a = r.of("route_decision")[0], r.of("answer")[0]
        outcomes.append((d["models"], d["plan"], a["model"], a["answer"], a["models_called"], a["cost_usd"]))
    assert outcomes[0] == outcomes[1]
