"""The history fold: a delivery record joins the history once; a feedback record teaches it under the bandit rule
(only a called model, only after delivery); a bad record raises and changes nothing. The feedback fold turns
each accepted verdict into one history record."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.flow.feedback import FeedbackFold
from selfevolve.flow.learning import HistoryFold
from selfevolve.scoring import arbiter
from selfevolve.wire.codec import Codec
from selfevolve.wire.records import history_delivery, history_feedback, vector_bytes

FOLD = HistoryFold()
CODEC = Codec.from_dir()


def _verdict(qid: str = "q1", called=("a", "b"), winner: str | None = None) -> arbiter.Verdict:
    return arbiter.Verdict(qid, winner or called[0], "A", 0.9, {}, tuple(called), (), 0.003, "hybrid", 1,
                           {m: 0.001 * (i + 1) for i, m in enumerate(called)})


def _vector(seed: int = 0, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def delivery_record(qid: str = "q1", tenant: str = "t", called=("a", "b"), winner: str | None = None,
                    seed: int = 0, source: str = "p.queries:0:0", dim: int = 384) -> dict:
    return history_delivery(_verdict(qid, called, winner), tenant, f"text of {qid}", _vector(seed, dim), 3, 77,
                            source)


def delivery(qid: str = "q1", tenant: str = "t", **kw) -> Event:
    return Event("history", delivery_record(qid, tenant, **kw), "p.history", (0, 0))


def feedback_record(qid: str = "q1", model: str = "a", quality: float = 1.0, tenant: str = "t") -> dict:
    return {"query_id": qid, "model": model, "quality": quality, "tenant": tenant, "source": "user", "ts_ms": 1}


def feedback(qid: str = "q1", model: str = "a", quality: float = 1.0, tenant: str = "t") -> Event:
    return Event("history", history_feedback(feedback_record(qid, model, quality, tenant)))


def _fold(events) -> object:
    state = FOLD.initialize()
    for e in events:
        state, outs = FOLD.step(state, e)
        assert outs == []
    return state


def _snapshot(h) -> list:
    """What a history holds, comparable: each record's fields, in order, and its index size."""
    return [(r.query_id, r.tenant, r.winner, dict(r.costs), dict(r.quality), r.source) for r in h.records] + [len(h)]


def test_a_delivery_joins_the_history_with_its_costs_winner_time_and_source():
    h = _fold([delivery(called=("a", "b"), winner="b")])
    rec = h.get("q1", "t")
    assert (rec.winner, rec.costs, rec.quality) == ("b", {"a": 0.001, "b": 0.002}, {"a": None, "b": None})
    assert (rec.ts_ms, rec.source, rec.delivered, rec.strategy) == (77, "p.queries:0:0", True, "hybrid")
    (found, sim), = h.search(_vector(0), 1)
    assert found is rec and sim == pytest.approx(1.0, abs=1e-5)


def test_a_delivery_record_as_the_topic_carries_it_joins_alike():
    """Through Avro (the follower decodes what the scorer encoded): the vector bytes are the same floats."""
    wire = CODEC.decode("history", CODEC.encode("history", delivery_record()))
    h = _fold([Event("history", wire)])
    (found, sim), = h.search(_vector(0), 1)
    assert found.query_id == "q1" and sim == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("events, want", [
    # (events after the delivery of q1 calling a and b, model -> quality learnt)
    ([feedback(model="a", quality=1.0)], {"a": 1.0, "b": None}),
    ([feedback(model="a", quality=1.0), feedback(model="b", quality=0.0)], {"a": 1.0, "b": 0.0}),
    ([feedback(model="a", quality=1.0), feedback(model="a", quality=0.0)], {"a": 0.0, "b": None}),  # corrected
    ([feedback(model="c", quality=1.0)], {"a": None, "b": None}),       # c was not called: nothing to learn
    ([feedback(model="a", quality=1.5)], {"a": None, "b": None}),       # outside [0, 1]
    ([feedback(model="a", quality=-0.5)], {"a": None, "b": None}),
    ([feedback(model="a", quality=float("nan"))], {"a": None, "b": None}),
    ([feedback(model="a", tenant="other")], {"a": None, "b": None}),    # another tenant's q1 is not this one
    ([feedback(qid="q2", model="a")], {"a": None, "b": None}),          # a query never delivered
])
def test_feedback_after_delivery_follows_the_bandit_rule(events, want):
    h = _fold([delivery(), *events])
    assert h.get("q1", "t").quality == want
    assert h.model_mean("a")[1] == (want["a"] is not None)  # only learnt verdicts count in the global prior


def test_feedback_before_its_delivery_is_ignored_and_not_held_back():
    h = _fold([feedback(model="a", quality=1.0), delivery()])
    assert h.get("q1", "t").quality == {"a": None, "b": None}
    assert h.model_mean("a") == (None, 0, 0.001)
    h, _ = FOLD.step(h, feedback(model="a", quality=0.0))  # the same verdict once delivered is learnt
    assert h.get("q1", "t").quality["a"] == 0.0 and h.model_mean("a")[:2] == (0.0, 1)


def test_a_redone_delivery_keeps_the_first_record_and_its_feedback():
    h = _fold([delivery(called=("a", "b"), winner="a", seed=0), feedback(model="a", quality=1.0),
               delivery(called=("c",), winner="c", seed=1, source="p.queries:0:9")])
    assert len(h) == 1
    rec = h.get("q1", "t")
    assert (rec.winner, rec.source, rec.quality) == ("a", "p.queries:0:0", {"a": 1.0, "b": None})
    assert h.model_mean("c") == (None, 0, None)
    assert FOLD.deliver(h, delivery_record()) is False
    assert FOLD.deliver(h, delivery_record("q2")) is True and len(h) == 2


def test_two_tenants_same_id_are_two_queries():
    h = _fold([delivery(tenant="t", seed=0), delivery(tenant="u", seed=1), feedback(tenant="u", quality=0.0)])
    assert h.get("q1", "t").quality["a"] is None and h.get("q1", "u").quality["a"] == 0.0


def test_the_state_is_the_history_itself_mutated_in_place():
    h = FOLD.initialize()
    same, _ = FOLD.step(h, delivery())
    assert same is h and len(h) == 1


@pytest.mark.parametrize("change, match", [
    ({"vector": None}, "vector, it carries none"),
    ({"vector": b""}, "vector, it carries none"),
    ({"vector": vector_bytes(_vector(0, 383))}, "384-float vector, it carries 383 floats"),
    ({"vector": vector_bytes(_vector(0, 768))}, "it carries 768 floats"),
    ({"vector": vector_bytes(np.full(384, np.nan, np.float32))}, "NaN"),
    ({"vector": b"\x00\x01\x02"}, "whole number of float32s"),
    ({"event": "deliver"}, "event is one of"),
    ({"event": ""}, "event is one of"),
    ({"event": None}, "event is one of"),
])
def test_a_bad_history_record_raises_and_changes_nothing(change, match):
    h = _fold([delivery(qid="q0", seed=5), feedback(qid="q0", model="a", quality=1.0)])
    before = _snapshot(h)
    with pytest.raises(ValidationError, match=match):
        FOLD.step(h, Event("history", {**delivery_record(), **change}))
    assert _snapshot(h) == before and h.get("q1", "t") is None


def test_an_unknown_event_raises_even_for_a_feedback_shaped_record():
    h = _fold([delivery()])
    with pytest.raises(ValidationError, match="not 'verdict'"):
        FOLD.step(h, Event("history", {**history_feedback(feedback_record()), "event": "verdict"}))
    assert h.get("q1", "t").quality == {"a": None, "b": None}


def test_events_it_does_not_read_change_nothing():
    h = _fold([delivery()])
    assert FOLD.step(h, Event("answer", {"query_id": "q1"})) == (h, [])
    assert FOLD.step(h, Event("feedback", feedback_record(quality=0.0))) == (h, [])  # only its history copy
    assert len(h) == 1 and h.get("q1", "t").quality["a"] is None


# -- the same records in the same order: the same history (every replica folds the one topic) ----------------
RECORDS = st.lists(st.one_of(
    st.tuples(st.just("delivery"), st.sampled_from(["q0", "q1", "q2"]), st.sampled_from(["t", "u"]),
              st.integers(0, 3)),
    st.tuples(st.just("feedback"), st.sampled_from(["q0", "q1", "q2"]), st.sampled_from(["t", "u"]),
              st.sampled_from(["a", "b", "c"]), st.sampled_from([0.0, 0.5, 1.0, 2.0])),
    st.tuples(st.just("bad"), st.sampled_from(["q0", "q3"]), st.sampled_from([None, b"", b"\x00" * 12])),
), max_size=20)


def _record(spec) -> dict:
    if spec[0] == "delivery":
        _, qid, tenant, seed = spec
        return delivery_record(qid, tenant, seed=seed, winner="b" if seed % 2 else "a")
    if spec[0] == "feedback":
        _, qid, tenant, model, quality = spec
        return history_feedback(feedback_record(qid, model, quality, tenant))
    _, qid, raw = spec
    return {**delivery_record(qid), "vector": raw}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_folding_a_history_is_the_first_delivery_plus_the_last_accepted_verdict(spec):
    """A model of the rule: per (tenant, id) the first delivery's record, each called model's quality the
    last verdict in [0, 1] after it; bad records raise and count for nothing. Two replicas agree."""
    records = [_record(s) for s in spec]
    replicas = []
    for _ in range(2):
        h = FOLD.initialize()
        for r in records:
            try:
                FOLD.step(h, Event("history", r))
            except ValidationError:
                assert r["vector"] in (None, b"", b"\x00" * 12)
        replicas.append(h)
    assert _snapshot(replicas[0]) == _snapshot(replicas[1])
    want: dict[tuple[str, str], dict] = {}
    for s, r in zip(spec, records):
        key = (r["tenant"], r["query_id"])
        if s[0] == "delivery" and key not in want:
            want[key] = {"winner": r["winner"], "quality": {m: None for m in r["costs"]}}
        elif s[0] == "feedback" and key in want and r["model"] in want[key]["quality"] and r["quality"] <= 1.0:
            want[key]["quality"][r["model"]] = r["quality"]
    h = replicas[0]
    assert len(h) == len(want)
    for (tenant, qid), w in want.items():
        rec = h.get(qid, tenant)
        assert {"winner": rec.winner, "quality": rec.quality} == w


# -- the feedback fold ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fb", [
    feedback_record(),
    feedback_record("q9", "b", 0.0, "acme"),
    {**feedback_record("x/y", "m", 0.25, "t"), "source": "", "ts_ms": 123456789012},
    {**feedback_record(quality=1.5)},  # out of range: still sent; the history fold's bandit rule refuses it
])
def test_feedback_becomes_one_history_record_keyed_by_its_query(fb):
    fold = FeedbackFold()
    state, outs = fold.step(fold.initialize(), Event("feedback", fb, "p.feedback", (0, 4)))
    assert state is None
    (out,) = outs
    assert (out.kind, out.stage, out.key) == ("history", "history", f"{fb['tenant']}/{fb['query_id']}")
    r = out.record
    assert r["event"] == "feedback"
    assert {k: r[k] for k in ("query_id", "tenant", "model", "quality", "ts_ms", "source")} == {
        k: fb[k] for k in ("query_id", "tenant", "model", "quality", "ts_ms", "source")}
    assert (r["vector"], r["winner"], r["costs"], r["text"], r["answer"]) == (None, None, {}, "", "")
    assert CODEC.decode("history", CODEC.encode("history", r)) == {**r, "version": 1}


def test_feedback_through_both_folds_teaches_the_history():
    h = _fold([delivery()])
    _, (out,) = FeedbackFold().step(None, Event("feedback", feedback_record(model="b", quality=0.0)))
    FOLD.step(h, Event(out.kind, out.record))
    assert h.get("q1", "t").quality == {"a": None, "b": 0.0}


def test_the_feedback_fold_reads_feedback_only():
    fold = FeedbackFold()
    assert fold.step(None, Event("history", history_feedback(feedback_record()))) == (None, [])
    assert fold.step(None, Event("answer", {"query_id": "q1"})) == (None, [])
    assert isinstance(FeedbackFold().step(None, Event("feedback", feedback_record()))[1][0], Out)
