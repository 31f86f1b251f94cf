"""The answer cache in the shipped folds (in-memory driver): an exact repeat is answered from the cache at no cost,
a verdict below the bar evicts it, the TTL and tenants bound it, a pinned model is respected, and replicas agree."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.pinning import PIN_KEY
from selfevolve.routing.reuse import CACHED

DIM = 32
S = Settings()
DS = load_dir(S.replay_dir)
CAT = Catalogue.load(S.catalogue)
SAMPLES = list(DS.samples)[:6]


def _embed(texts: list[str]) -> np.ndarray:
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:DIM].astype(np.float32) - 128
            for t in texts]
    return np.stack([r / np.linalg.norm(r) for r in rows])


def _query(i: int, sample, tenant: str = "t", ts: int | None = None, **meta) -> dict:
    return {"query_id": f"q{i}", "text": sample.prompt, "tenant": tenant,
            "metadata": {"sample_id": sample.sample_id, **meta}, "ts_ms": i * 1000 if ts is None else ts}


def _run(queries: list[dict], verdicts=None, **settings):
    flow = dataflow.build(S.model_copy(update=settings), CAT, _embed, roles=(dataflow.SERVE,), dim=DIM)
    d = flow.driver(recorded(DS, CAT))
    result = driver.replay(d, queries, verdicts, window=1)
    return {a["query_id"]: a for a in result.of("answer")}, result, flow


def test_an_exact_repeat_is_answered_from_the_cache_at_no_cost():
    first = _query(0, SAMPLES[0])
    repeat = {**_query(1, SAMPLES[0]), "text": "  " + SAMPLES[0].prompt.upper() + " "}  # normalised alike
    answers, result, _ = _run([first, repeat])
    a, b = answers["q0"], answers["q1"]
    assert a["strategy"] != CACHED and b["strategy"] == CACHED
    assert (b["answer"], b["model"], b["cost_usd"], b["models_called"]) == (a["answer"], a["model"], 0.0, [])
    (decision,) = [d for d in result.of("route_decision") if d["query_id"] == "q1"]
    assert decision["cached_from"] == "q0" and not result.of("inference_request")[len(a["models_called"]):]
    delivered = [h for h in result.of("history") if h["event"] == "delivery"]
    assert [h["cached_from"] for h in delivered] == ["", "q0"]


def test_a_different_question_is_not_a_hit():
    answers, _, _ = _run([_query(0, SAMPLES[0]), _query(1, SAMPLES[1])])
    assert CACHED not in {a["strategy"] for a in answers.values()}


@pytest.mark.parametrize("quality, cached_again", [(0.0, False), (1.0, True)])
def test_a_verdict_against_the_cached_answer_evicts_it(quality, cached_again):
    def verdicts(answer: dict) -> list[dict]:
        if answer["query_id"] != "q1":
            return []
        return [{"query_id": "q1", "tenant": "t", "model": answer["model"], "quality": quality, "source": "user",
                 "ts_ms": answer["ts_ms"]}]

    answers, _, flow = _run([_query(i, SAMPLES[0]) for i in range(3)], verdicts)
    assert answers["q1"]["strategy"] == CACHED
    assert (answers["q2"]["strategy"] == CACHED) is cached_again
    assert flow.states["answer_cache"].stats.evictions_feedback == (0 if cached_again else 1)


@pytest.mark.parametrize("age_s, hit", [(10, True), (3600, True), (3601, False)])
def test_the_ttl_counts_event_time_from_the_delivery(age_s, hit):
    answers, _, _ = _run([_query(0, SAMPLES[0], ts=0), _query(1, SAMPLES[0], ts=age_s * 1000)],
                         answer_cache_ttl_s=3600.0)
    assert (answers["q1"]["strategy"] == CACHED) is hit


def test_tenants_never_share_answers_and_size_zero_turns_it_off():
    answers, _, _ = _run([_query(0, SAMPLES[0], tenant="a"), _query(1, SAMPLES[0], tenant="b")])
    assert answers["q1"]["strategy"] != CACHED
    answers, _, _ = _run([_query(0, SAMPLES[0]), _query(1, SAMPLES[0])], answer_cache_size=0)
    assert answers["q1"]["strategy"] != CACHED


def test_a_query_pinned_to_another_model_is_not_answered_from_the_cache():
    answers, _, _ = _run([_query(0, SAMPLES[0])])
    other = next(m.name for m in CAT.models if m.name != answers["q0"]["model"])
    answers, _, _ = _run([_query(0, SAMPLES[0]), _query(1, SAMPLES[0], **{PIN_KEY: other})])
    assert answers["q1"]["strategy"] == "pinned" and answers["q1"]["models_called"] == [other]


def test_two_replicas_fed_the_same_history_cache_alike():
    queries = [_query(i, SAMPLES[i % 3]) for i in range(8)]
    _, result, flow = _run(queries)
    replica = dataflow.build(S, CAT, _embed, roles=(dataflow.SERVE,), dim=DIM)
    fold = next(f for f in replica.folds if f.name == "answer_cache")
    state = replica.states["answer_cache"]
    for record in result.of("history"):
        state, _ = fold.step(state, driver.Event("history", record))
    assert state.to_json() == flow.states["answer_cache"].to_json()
