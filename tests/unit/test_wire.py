"""Core objects survive the trip through their Avro records: the scorer rebuilds exactly what was routed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from selfevolve.scoring import arbiter
from selfevolve.models.catalogue import Catalogue
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.distill.live import examples_from_buffer
from selfevolve.routing.history import History
from selfevolve.routing import RouteQuery, Router
from selfevolve.wire.records import (answer_record, decision_from_record, decision_record, request_record,
                             response_from_record, score_records)

CODEC = Codec.from_dir()
SETTINGS = Settings()
CATALOGUE = Catalogue.load(SETTINGS.catalogue)


def _decision(text: str, budget: float | None = None):
    router = Router(SETTINGS, CATALOGUE, History())
    vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    return router.route(RouteQuery("q-1", text, "acme", vec))


@hsettings(max_examples=25, deadline=None)
@given(text=st.text(min_size=1, max_size=200), meta=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_decision_round_trips_through_its_avro_record(text, meta):
    d = _decision(text)
    rec = CODEC.decode("route_decision", CODEC.encode("route_decision", decision_record(d, meta, 1.5, 7, domain=2)))
    assert decision_from_record(rec) == d
    assert rec["metadata"] == meta and rec["domain"] == 2 and rec["models"] == list(d.models)


def test_request_ids_are_deterministic_and_responses_map_back():
    d = _decision("Which planet is largest?")
    call = arbiter.Call("q-1", d.models[0], 1, fallback_from="x")
    req = request_record(call, d, {"sample_id": "s"}, 5)
    assert req == request_record(call, d, {"sample_id": "s"}, 5)
    assert req["request_id"] == f"acme/q-1:1:{d.models[0]}" and req["text"] == d.text
    CODEC.encode("inference_request", req)
    resp = {**{k: req[k] for k in ("request_id", "query_id", "tenant", "model", "fallback_from", "stage")},
            "answer": "Jupiter", "confidence": -1.0, "latency_ms": 1.0, "prompt_tokens": 3, "completion_tokens": 1,
            "cost_usd": 0.25, "ok": True, "error": None, "ts_ms": 1}
    r = response_from_record(CODEC.decode("inference_response", CODEC.encode("inference_response", resp)))
    assert (r.model, r.answer, r.cost, r.stage, r.ok) == (d.models[0], "Jupiter", 0.25, 1, True)


@pytest.mark.parametrize("n_models, contested", [(1, False), (2, True), (3, True)])
def test_scores_say_whether_the_win_was_contested(n_models, contested):
    d = _decision("Name a prime number.")
    state, _ = arbiter.start(d)
    verdict = None
    for m in d.models:
        state, out = arbiter.step(state, arbiter.Response("q-1", m, "7", True, 0.01))
        verdict = next((o for o in out if isinstance(o, arbiter.Verdict)), verdict)
    assert verdict is not None
    scores = dict(list(verdict.scores.items())[:n_models])
    v = arbiter.Verdict(**{**verdict.__dict__, "scores": scores})
    recs = score_records(v, 4, 9)
    assert all(r["contested"] is contested for r in recs)
    assert all(CODEC.decode("score", CODEC.encode("score", r))["cost_usd"] == r["cost_usd"] for r in recs)
    ans = answer_record(v, "acme", 4, 12.0, 9)
    assert CODEC.decode("answer", CODEC.encode("answer", ans))["models_called"] == list(v.models_called)


@pytest.mark.parametrize("answer, steps, final", [
    ("B", (), "B"),
    ("3 + 4 = 7\n7 * 2 = 14\nThe answer is 14", ("3 + 4 = 7", "7 * 2 = 14"), "The answer is 14"),
])
def test_buffered_teacher_answers_become_examples_with_steps(answer, steps, final):
    (ex,) = examples_from_buffer([{"prompt": "p", "answer": answer, "metrics": [0.9, 0.8, 0.7, 0.6]}], "3")
    assert ex.steps == steps and ex.response == final and ex.metrics == (0.9, 0.8, 0.7, 0.6) and ex.domain == "3"
