"""Quality target in the folds (#15): audits and shadows in the plan, λ on the strategy topic, the router
applying it, and the pools bench's pure helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event
from selfevolve.flow.metalearner import MetaLearnerFold, MetaLearnerState, supervisor_name
from selfevolve.flow.router import RouterFold, operating_point
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.routing import RouteQuery, Router
from selfevolve.routing.history import History, Record
from selfevolve.routing.target import audit_due, audit_key
from selfevolve.wire.codec import Codec

ROOT = Path(__file__).resolve().parents[2]
CAT = Catalogue([
    ModelSpec("cheap", "replay", Role.STUDENT, 0, cost_per_call=0.001),
    ModelSpec("sup", "replay", Role.SUPERVISOR, 3, cost_per_call=0.05),
])
COST = {"cheap": 0.001, "sup": 0.05}


def _history(cheap_right: float | None) -> tuple[np.ndarray, History]:
    """30 past queries near `base` on which the supervisor was right and the cheap model right in the
    fraction cheap_right (None: only the supervisor was called)."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    for i in range(30):
        v = base.copy()
        v[1 + i] = 0.05
        called = ("sup",) if cheap_right is None else ("cheap", "sup")
        q = {"sup": 1.0} if cheap_right is None else {"cheap": float(i < 30 * cheap_right), "sup": 1.0}
        h.add(v / np.linalg.norm(v), Record(f"p{i}", costs={m: COST[m] for m in called}, quality=q))
    return base, h


# --- the plan: audits (with a target only) and the cheap shadow of a lone strong call ---------------------

def _keys(n: int = 400) -> list[str]:
    return [f"q{i}" for i in range(n)]


@pytest.mark.parametrize(("target", "rate", "audited"), [(0.95, 0.2, True), (None, 0.2, False), (0.95, 0.0, False)])
def test_audited_queries_also_call_the_supervisor_only_with_a_target(target, rate, audited):
    base, h = _history(cheap_right=1.0)  # the cheap model is always right: alone it would be called
    r = Router(Settings(quality_target=target, quality_audit_rate=rate), CAT, h, cost_lambda=1.0)
    calls = {q: r.route(RouteQuery(q, "t", "acme", vector=base)).models for q in _keys()}
    due = {q for q in calls if audit_due(audit_key("acme", q), rate)}
    assert {q for q, m in calls.items() if "sup" in m} == (due if audited else set())
    assert all("cheap" in m for m in calls.values())
    if audited:
        assert 0.1 < len(due) / len(calls) < 0.3


@pytest.mark.parametrize(("shadow", "cheap_seen", "models"), [
    (0.1, False, ("cheap", "sup")),  # the cheap model never judged near here: it shadows the strong call
    (0.1, True, ("sup",)),  # judged (and wrong) on 30 neighbours: nothing left to learn by paying for it
    (0.0, False, ("sup",)),  # off
    (0.01, False, ("sup",)),  # cheap = 2% of the supervisor's price: over the ratio
])
def test_a_lone_strong_call_is_shadowed_by_an_unjudged_cheap_model(shadow, cheap_seen, models):
    base, h = _history(cheap_right=0.0 if cheap_seen else None)
    d = Router(Settings(router_shadow_ratio=shadow), CAT, h, cost_lambda=0.1).route(RouteQuery("q", "t", vector=base))
    assert d.models == models and d.escalation == ()
    assert d.expected_cost == pytest.approx(sum(COST[m] for m in models))


# --- λ on the strategy topic -----------------------------------------------------------------------------

def _query(i: int) -> Event:
    return Event("query", {"query_id": f"q{i}", "text": "math x", "tenant": "t", "ts_ms": i}, "p.queries", (0, i))


def _strategy(**extra) -> Event:
    return Event("strategy", {"theta_high": 0.8, "theta_low": 0.5, "domain": -1, "reason": "", "ts_ms": 1, **extra})


class Embedder:
    def encode(self, texts):
        v = np.zeros((len(texts), 384), np.float32)
        v[:, 0] = 1
        return v


def test_a_strategy_event_with_lambda_sets_the_router_operating_point_and_one_without_keeps_it():
    _, h = _history(0.5)
    fold = RouterFold(Settings(cost_lambda=0.1), CAT, h, Embedder())
    state = fold.initialize()
    assert state.cost_lambda is None
    _, (out,) = fold.step(state, _query(0))
    assert out.record["plan"] and json.loads(out.record["plan"])["cost_lambda"] == 0.1
    state, _ = fold.step(state, _strategy(cost_lambda=0.7))
    assert state.cost_lambda == 0.7
    _, (out,) = fold.step(state, _query(1))
    assert json.loads(out.record["plan"])["cost_lambda"] == 0.7
    state, _ = fold.step(state, _strategy(theta_high=0.9))  # a v1 event: thresholds only
    assert (state.cost_lambda, state.theta_high) == (0.7, 0.9)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "x"])
def test_a_lambda_the_router_cannot_use_is_refused(bad):
    with pytest.raises(ValidationError):
        operating_point(bad)
    fold = RouterFold(Settings(), CAT, History(), Embedder())
    with pytest.raises(ValidationError):
        fold.step(fold.initialize(), _strategy(cost_lambda=bad))


def test_a_v1_strategy_record_reads_as_v2_with_lambda_unset():
    codec = Codec.from_dir(ROOT / "schemas")
    v1 = Codec({"strategy": json.loads((ROOT / "schemas/versions/strategy.v1.avsc").read_text())})
    old = codec.decode("strategy", v1.encode("strategy", {"theta_high": 0.8, "theta_low": 0.5, "ts_ms": 1}))
    assert old["cost_lambda"] is None and old["version"] == 1
    new = codec.decode("strategy", codec.encode("strategy", {"theta_high": 0.8, "theta_low": 0.5, "ts_ms": 1,
                                                              "cost_lambda": 0.25}))
    assert new["cost_lambda"] == 0.25 and new["version"] == codec.version("strategy") == 2


# --- the meta-learner's quality-target controller --------------------------------------------------------

def _answer(i: int, model: str, tenant: str = "t") -> Event:
    return Event("answer", {"query_id": f"q{i}", "tenant": tenant, "model": model, "answer": "a", "composite": 0.5,
                            "cost_usd": 0.001, "strategy": "targeted", "models_called": [model], "fallbacks": [],
                            "domain": 0, "latency_ms": 1.0, "ts_ms": i})


def _verdict(i: int, model: str, quality: float, tenant: str = "t") -> Event:
    return Event("feedback", {"query_id": f"q{i}", "model": model, "tenant": tenant, "quality": quality,
                              "source": "gold", "ts_ms": 10_000 + i})


def _stream(n: int, system_acc: float, sup_acc: float, rate: float, seed: int = 0) -> list[Event]:
    """n answers by the cheap model, each judged; audited ones also get the supervisor's verdict."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        events += [_answer(i, "cheap"), _verdict(i, "cheap", float(rng.random() < system_acc))]
        if audit_due(audit_key("t", f"q{i}"), rate):
            events.append(_verdict(i, "sup", float(rng.random() < sup_acc)))
    return events


def _run(fold, events, state=None):
    state = fold.initialize() if state is None else state
    outs = []
    for e in events:
        state, o = fold.step(state, e)
        outs += o
    return state, outs


def _meta(**kw) -> MetaLearnerFold:
    return MetaLearnerFold(Settings(**{"metalearn_every": 10**9, "quality_audit_rate": 0.3, **kw}), CAT)


@pytest.mark.parametrize(("system_acc", "direction"), [(0.6, -1), (0.9, +1)])
def test_the_controller_moves_lambda_toward_the_target_on_the_strategy_topic(system_acc, direction):
    fold = _meta(quality_target=0.9, cost_lambda=0.2)
    state, outs = _run(fold, _stream(600, system_acc, 0.9, 0.3))
    assert outs and all(o.kind == "strategy" and o.key == "global" for o in outs)
    lams = [o.record["cost_lambda"] for o in outs]
    assert lams[-1] == state.target.cost_lambda and (lams[-1] - 0.2) * direction > 0
    assert state.target.audits == sum(audit_due(audit_key("t", f"q{i}"), 0.3) for i in range(600))
    assert "quality target 0.9" in outs[-1].record["reason"]
    # Its own events read back change nothing; another's λ is followed.
    again, _ = _run(fold, [Event("strategy", o.record) for o in outs], state)
    assert again.target.cost_lambda == state.target.cost_lambda and again.echoes == ()
    other, _ = fold.step(again, _strategy(cost_lambda=3.0))
    assert other.target.cost_lambda == 3.0


def test_without_a_target_feedback_moves_nothing_and_audits_count_once():
    state, outs = _run(_meta(), _stream(300, 0.5, 0.9, 0.3))
    assert state.target is None and outs == []
    fold = _meta(quality_target=0.9)
    key = next(i for i in range(100) if audit_due(audit_key("t", f"q{i}"), 0.3))
    skip = next(i for i in range(100) if not audit_due(audit_key("t", f"q{i}"), 0.3))
    state, _ = _run(fold, [_answer(key, "cheap"), _verdict(key, "sup", 1.0), _verdict(key, "sup", 1.0),
                           _answer(skip, "cheap"), _verdict(skip, "sup", 0.0),  # escalations are no sample
                           _verdict(key, "cheap", 1.0), _verdict(key, "cheap", 0.0)])  # first verdict counts
    assert (state.target.audits, state.target.seen, state.target.system.mean) == (1, 1, 1.0)


@hsettings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(("cheap", "sup")), st.floats(0, 1)), max_size=80),
       st.integers(0, 80))
def test_the_controller_state_survives_a_snapshot_anywhere(verdicts, cut):
    fold = _meta(quality_target=0.9)
    events = []
    for i, m, q in verdicts:
        events += [_answer(i, m), _verdict(i, m, q), _verdict(i, "sup", q)]
    whole, outs = _run(fold, events)
    head, first = _run(fold, events[:cut])
    tail, second = _run(fold, events[cut:], MetaLearnerState.from_json(json.loads(json.dumps(head.to_json()))))
    assert tail.to_json() == whole.to_json() and [o.record for o in first + second] == [o.record for o in outs]


def test_the_supervisor_is_the_dearest_active_one():
    cat = Catalogue([*CAT.models, ModelSpec("sup2", "replay", Role.SUPERVISOR, 3, cost_per_call=0.2, reserve=True)])
    assert supervisor_name(CAT) == supervisor_name(cat) == "sup"


# --- the pools bench's pure parts --------------------------------------------------------------------------

def test_cheapest_curve_point_reaching_the_target_and_the_knn_curve():
    from bench.baselines import knn_curve
    from bench.quality_pools import cheapest

    curve = [{"lambda": lam, "cost_ratio": c, "accuracy_vs_supervisor": r}
             for lam, c, r in [(0.0, 1.0, 1.0), (0.1, 0.5, 0.96), (0.2, 0.3, 0.94), (0.3, 0.6, 0.97)]]
    assert cheapest(curve, 0.95)["lambda"] == 0.1 and cheapest(curve, 0.99)["lambda"] == 0.0
    assert cheapest(curve, 1.01) is None
    assert knn_curve([], [], ["a"], "a", None, None, [0.1]) == []
