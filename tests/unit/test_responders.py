"""Recorded responders, the replay workload and the dataflow: the pieces the driver's replays are made of."""

from __future__ import annotations

import numpy as np
import pytest

from selfevolve.config import Settings
from selfevolve.data.routerbench import Dataset, Sample
from selfevolve.errors import ConfigError
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import NEVER_CALLED, logged, recorded
from selfevolve.flow.workload import from_log, from_samples, outcomes, plan
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.routing import domains
from selfevolve.wire.codec import Codec

CAT = Catalogue([ModelSpec("big", "replay", Role.SUPERVISOR, 3, cost_per_call=0.01),
                 ModelSpec("small", "replay", Role.STUDENT, 0, cost_per_call=0.001),
                 ModelSpec("alias", "replay", Role.TA, 1, cost_per_call=0.002, options={"replay_model": "big"})])


def _sample(i: int, split: str = "test", small: str = "B") -> Sample:
    return Sample(f"s{i}", "toy", split, f"Question {i}?\nA) yes\nB) no\nAnswer:", {"big": "A", "small": small},
                  {"big": 0.01, "small": 0.001}, {"big": 1.0, "small": 0.0})


def _request(model: str, sid: str | None = "s1", text: str = "Question 1?\nA) yes\nB) no\nAnswer:") -> dict:
    return {"request_id": f"t/q:0:{model}", "query_id": "q", "tenant": "t", "model": model, "text": text,
            "strategy": "targeted", "stage": 0, "fallback_from": None,
            "metadata": {"sample_id": sid} if sid else {}, "ts_ms": 7000}


def test_recorded_serves_the_row_and_column_with_their_cost():
    r = recorded(Dataset((_sample(1), _sample(2, small=" ")), ("big", "small")), CAT)
    ok = r(_request("big"))
    assert ok["ok"] and ok["answer"] == "A" and ok["cost_usd"] == 0.01 and ok["ts_ms"] == 7000
    assert ok["latency_ms"] == 0.0 and ok["request_id"] == "t/q:0:big"
    assert r(_request("alias"))["answer"] == "A"  # the spec's replay_model column
    assert r(_request("big", sid=None))["answer"] == "A"  # by the exact prompt when no sample id is given
    # No row, an empty recorded answer, a model outside the catalogue: failed calls, which cost nothing.
    for bad in (_request("big", sid="nope"), _request("small", sid="s2"), _request("ghost")):
        out = r(bad)
        assert not out["ok"] and out["answer"] == "" and out["cost_usd"] == 0.0 and out["error"]
    assert "empty answer" in r(_request("small", sid="s2"))["error"]
    # Nothing of gold is in a response: its fields are the request's and the recording's.
    assert set(ok) == {"request_id", "query_id", "tenant", "model", "fallback_from", "stage", "ts_ms", "ok", "answer",
                       "confidence", "latency_ms", "prompt_tokens", "completion_tokens", "cost_usd", "error"}


def test_logged_serves_recorded_responses_and_fails_calls_never_made():
    rec = {"query_id": "q", "tenant": "t", "model": "big", "ok": True, "answer": "A", "cost_usd": 0.02,
           "confidence": -1.0, "error": None}
    r = logged([rec, {**rec, "model": "small", "ok": False, "answer": "", "error": "timed out"}])
    assert r(_request("big"))["answer"] == "A" and r(_request("big"))["cost_usd"] == 0.02
    assert not r(_request("small"))["ok"] and "timed out" in r(_request("small"))["error"]
    missing = r(_request("alias"))
    assert not missing["ok"] and NEVER_CALLED in missing["error"]


def test_plan_is_train_then_test_shuffled_by_seed():
    ds = Dataset(tuple([_sample(i, "train") for i in range(5)] + [_sample(i + 5) for i in range(5)]), ("big", "small"))
    p = plan(ds, 1, warmup=3, limit=2)
    assert [ph for ph, _ in p] == ["warmup"] * 3 + ["test"] * 2
    assert p == plan(ds, 1, warmup=3, limit=2) and p != plan(ds, 2, warmup=3, limit=2)
    w = from_samples("x", p, "big")
    assert [q["ts_ms"] for q in w.queries] == [0, 1000, 2000, 3000, 4000]
    assert w.queries[0]["metadata"]["phase"] == "warmup" and "correct" not in str(w.queries)


def test_feedback_is_gold_on_the_models_paid_for_only():
    w = from_samples("x", [("test", _sample(1))], "big")
    answer = {"query_id": "s1", "tenant": "replay", "model": "small", "models_called": ["small"], "ts_ms": 5}
    assert w.feedback(answer) == [{"query_id": "s1", "tenant": "replay", "model": "small", "quality": 0.0,
                                   "source": "replay-gold", "ts_ms": 5}]
    assert w.judge(answer) == 0.0 and w.judge({**answer, "model": "big"}) == 1.0
    assert w.judge({**answer, "model": ""}) == 0.0  # no answer delivered: wrong


def test_an_export_replays_its_queries_in_order_with_its_feedback_as_gold():
    qs = [{"query_id": "b", "text": "x", "tenant": "t", "metadata": {}, "ts_ms": 99},
          {"query_id": "a", "text": "y", "tenant": "t", "metadata": {}, "ts_ms": 120}]
    fb = [{"query_id": "b", "tenant": "t", "model": "m", "quality": 0.0, "ts_ms": 5},
          {"query_id": "b", "tenant": "t", "model": "m", "quality": 1.0, "ts_ms": 9}]
    w = from_log("log", qs, fb, "big", 0.01)
    assert [q["query_id"] for q in w.queries] == ["b", "a"] and [q["ts_ms"] for q in w.queries] == [0, 1000]
    assert w.gold == {"t/b": {"m": 1.0}} and w.supervisor_cost == {"t/b": 0.01, "t/a": 0.01}


def _embed(texts):
    return np.stack([np.eye(8)[sum(map(ord, t)) % 8] for t in texts]).astype(np.float32)


def test_dataflow_builds_the_graph_and_the_shipped_folds_replay_deterministically():
    settings = Settings(metalearn_every=2)
    flow = dataflow.build(settings, CAT, _embed, dim=8)
    assert [f.name for f in flow.folds] == [n.name for n in dataflow.GRAPH]
    assert flow.states["history"] is flow.folds[0].history  # the router reads what the history fold writes
    assert dataflow.consumers("feedback") == ["feedback", "metalearner"]
    assert dataflow.consumers("history")[:2] == ["router", "history"]  # the router learns its domains from it
    ds = Dataset(tuple(_sample(i) for i in range(6)), ("big", "small"))
    w = from_samples("x", plan(ds, 0), "big")

    def run():
        f = dataflow.build(settings, CAT, _embed, dim=8)
        return driver.replay(f.driver(recorded(ds, CAT)), w.queries, w.feedback, window=2)

    a, b = run(), run()
    assert a.records == b.records and not a.dead_letters
    assert len(a.of("answer")) == 6 and len(a.of("feedback")) >= 6
    outs = outcomes(a, w)
    assert [o.key for o in outs] == [f"replay/{q['query_id']}" for q in w.queries]
    # Judged after the fact by gold on the delivered model ("alias" is no column of the data: no verdict).
    assert all(o.correct == {"big": 1.0, "small": 0.0}.get(o.winner) for o in outs)
    # Deliveries and accepted verdicts travel as history records (encodable: the topic carries them), and the
    # history and the router's domains are what folding them gives.
    codec = Codec.from_dir()
    events = [h["event"] for h in a.of("history")]
    assert events.count("delivery") == 6 and events.count("feedback") == len(a.of("feedback"))
    assert all(codec.decode("history", codec.encode("history", h)) for h in a.of("history"))
    assert [d.record["query_id"] for d in a.deliveries] == [x["query_id"] for x in a.of("answer")]
    assert [d.payload.winner for d in a.deliveries] == [x["model"] or None for x in a.of("answer")]
    history = a.states["history"]
    assert len(history) == 6 and any(q is not None for r in history.records for q in r.quality.values())
    assert sum(domains.sizes(a.states["router"].domains).values()) == 6


def test_dataflow_refuses_a_fold_that_reads_other_kinds():
    class Odd:
        name, consumes = "router", ("query",)

    with pytest.raises(ConfigError, match="dataflow says"):
        dataflow.check([Odd()])
    with pytest.raises(ConfigError, match="no fold"):
        dataflow.node("nope")
