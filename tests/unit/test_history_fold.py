"""The history fold: a delivered answer joins the history once; feedback teaches it under the bandit rule
(only a called model, only after delivery); what the rule refuses changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.flow.learning import Delivery, HistoryFold
from selfevolve.scoring import arbiter

FOLD = HistoryFold()


def _verdict(qid: str = "q1", called=("a", "b"), winner: str | None = None) -> arbiter.Verdict:
    return arbiter.Verdict(qid, winner or called[0], "A", 0.9, {}, tuple(called), (), 0.003, "hybrid", 1,
                           {m: 0.001 * (i + 1) for i, m in enumerate(called)})


def _vector(seed: int = 0, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def delivery(qid: str = "q1", tenant: str = "t", called=("a", "b"), winner: str | None = None, seed: int = 0,
             source: str = "p.queries:0:0", dim: int = 384) -> Event:
    d = Delivery(_vector(seed, dim), _verdict(qid, called, winner), tenant, ts_ms=77, source=source)
    return Event("delivery", {"query_id": qid, "tenant": tenant}, payload=d)


def feedback(qid: str = "q1", model: str = "a", quality: float = 1.0, tenant: str = "t") -> Event:
    return Event("feedback", {"query_id": qid, "model": model, "quality": quality, "tenant": tenant,
                              "source": "user", "ts_ms": 1})


def _fold(events) -> object:
    state = FOLD.initialize()
    for e in events:
        state, outs = FOLD.step(state, e)
        assert outs == []
    return state


def test_a_delivery_joins_the_history_with_its_costs_winner_time_and_source():
    h = _fold([delivery(called=("a", "b"), winner="b")])
    rec = h.get("q1", "t")
    assert (rec.winner, rec.costs, rec.quality) == ("b", {"a": 0.001, "b": 0.002}, {"a": None, "b": None})
    assert (rec.ts_ms, rec.source, rec.delivered) == (77, "p.queries:0:0", True)
    (found, sim), = h.search(_vector(0), 1)
    assert found is rec and sim == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("events, want", [
    # (events after the delivery of q1 calling a and b, model -> quality learnt)
    ([feedback(model="a", quality=1.0)], {"a": 1.0, "b": None}),
    ([feedback(model="a", quality=1.0), feedback(model="b", quality=0.0)], {"a": 1.0, "b": 0.0}),
    ([feedback(model="a", quality=1.0), feedback(model="a", quality=0.0)], {"a": 0.0, "b": None}),  # corrected
    ([feedback(model="c", quality=1.0)], {"a": None, "b": None}),       # c was not called: nothing to learn
    ([feedback(model="a", quality=1.5)], {"a": None, "b": None}),       # outside [0, 1]
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


def test_a_replayed_delivery_keeps_the_first_record_and_its_feedback():
    h = _fold([delivery(called=("a", "b"), winner="a", seed=0), feedback(model="a", quality=1.0),
               delivery(called=("c",), winner="c", seed=1, source="p.queries:0:9")])
    assert len(h) == 1
    rec = h.get("q1", "t")
    assert (rec.winner, rec.source, rec.quality) == ("a", "p.queries:0:0", {"a": 1.0, "b": None})
    assert h.model_mean("c") == (None, 0, None)
    assert HistoryFold.deliver(h, delivery().payload) is False


def test_two_tenants_same_id_are_two_queries():
    h = _fold([delivery(tenant="t", seed=0), delivery(tenant="u", seed=1), feedback(tenant="u", quality=0.0)])
    assert h.get("q1", "t").quality["a"] is None and h.get("q1", "u").quality["a"] == 0.0


def test_the_state_is_the_history_itself_mutated_in_place():
    h = FOLD.initialize()
    same, _ = FOLD.step(h, delivery())
    assert same is h and len(h) == 1


def test_a_delivery_without_a_delivery_payload_raises_and_changes_nothing():
    h = FOLD.initialize()
    with pytest.raises(ValidationError, match="carries a Delivery, not dict"):
        FOLD.step(h, Event("delivery", {"query_id": "q1"}, payload={"vector": []}))
    assert len(h) == 0


def test_events_it_does_not_read_change_nothing():
    h = _fold([delivery()])
    assert FOLD.step(h, Event("answer", {"query_id": "q1"})) == (h, [])
    assert len(h) == 1


def test_an_out_of_the_scorer_is_applied_through_the_serve_state(tmp_path):
    """ServeState.deliver takes the scorer's internal Out as it is (kind, record, payload)."""
    from selfevolve.config import Settings
    from streams.runtime import ServeState

    serve = ServeState.build(Settings(home=tmp_path), None)
    event = delivery(dim=serve.history.dim)
    serve.deliver(Out("delivery", event.record, "t/q1", payload=event.payload))
    assert serve.known("q1", "t") is not None and serve.known("q1", "u") is None
    serve.learn(feedback(model="b", quality=0.0))
    assert serve.known("q1", "t").quality == {"a": None, "b": 0.0}
