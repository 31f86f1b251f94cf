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


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_strategy_record_reads_with_lambda_or_tenant_unset(version):
    codec = Codec.from_dir(ROOT / "schemas")
    old_codec = Codec({"strategy": json.loads((ROOT / f"schemas/versions/strategy.v{version}.avsc").read_text())})
    old = codec.decode("strategy", old_codec.encode("strategy", {"theta_high": 0.8, "theta_low": 0.5, "ts_ms": 1}))
    assert old["cost_lambda"] is None and old["tenant"] is None and old["version"] == version
    new = codec.decode("strategy", codec.encode("strategy", {"theta_high": 0.8, "theta_low": 0.5, "ts_ms": 1,
                                                              "cost_lambda": 0.25, "tenant": "acme"}))
    assert (new["cost_lambda"], new["tenant"]) == (0.25, "acme") and new["version"] == codec.version("strategy") == 3


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


# --- a quality target per tenant ---------------------------------------------------------------------------

@pytest.mark.parametrize(("default", "own", "tenant", "expected"), [
    (None, {}, "a", None),
    (0.9, {}, "a", 0.9),
    (0.9, {"a": 0.99}, "a", 0.99),
    (0.9, {"a": 0.99}, "b", 0.9),
    (0.9, {"a": None}, "a", None),  # opted out of everyone's target
    (None, {"a": 0.8}, "b", None),
])
def test_a_tenant_is_held_to_its_own_target_else_everyones(default, own, tenant, expected):
    assert Settings(quality_target=default, quality_targets=own).target_for(tenant) == expected


@pytest.mark.parametrize("own", [{"a": 0.0}, {"a": 2.0}, {"": 0.9}])
def test_a_per_tenant_target_out_of_range_or_nameless_is_refused(own):
    with pytest.raises(ValueError):
        Settings(quality_targets=own)


def test_per_tenant_targets_come_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("SELFEVOLVE_QUALITY_TARGETS", '{"acme": 0.97, "beta": null}')
    s = Settings()
    assert s.quality_targets == {"acme": 0.97, "beta": None}
    assert json.loads(s.to_env()["SELFEVOLVE_QUALITY_TARGETS"]) == s.quality_targets  # children build the same


def test_only_queries_of_tenants_held_to_a_target_are_audited():
    base, h = _history(cheap_right=1.0)
    r = Router(Settings(quality_targets={"held": 0.95}, quality_audit_rate=0.3), CAT, h, cost_lambda=1.0)
    for tenant, audited in (("held", True), ("free", False)):
        calls = {q: r.route(RouteQuery(q, "t", tenant, vector=base)).models for q in _keys(200)}
        due = {q for q in calls if audit_due(audit_key(tenant, q), 0.3)}
        assert {q for q, m in calls.items() if "sup" in m} == (due if audited else set()), tenant


def _tenant_stream(n: int, tenant: str, system_acc: float, seed: int) -> list[list[Event]]:
    """Per query: its answer by the cheap model, the verdict on it, and the supervisor's if audited."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        events = [_answer(i, "cheap", tenant), _verdict(i, "cheap", float(rng.random() < system_acc), tenant)]
        if audit_due(audit_key(tenant, f"q{i}"), 0.3):
            events.append(_verdict(i, "sup", float(rng.random() < 0.9), tenant))
        out.append(events)
    return out


def test_each_tenant_with_its_own_target_gets_its_own_lambda_and_the_rest_share_one():
    # Same quality (0.8 of a supervisor right 90% of the time: ratio ~0.89) for both: the strict tenant's λ
    # falls (dearer), everyone else's rises (cheaper); a tenant that opted out moves nothing.
    fold = _meta(quality_target=0.8, quality_targets={"strict": 0.99, "none": None}, cost_lambda=0.2)
    a, b, c = (_tenant_stream(600, t, 0.8, seed) for t, seed in (("strict", 1), ("lax", 2), ("none", 3)))
    events = [e for trio in zip(a, b, c) for query in trio for e in query]
    state, outs = _run(fold, events)
    mine = [o.record for o in outs if o.record["tenant"] == "strict"]
    rest = [o.record for o in outs if o.record["tenant"] is None]
    assert mine and rest and len(mine) + len(rest) == len(outs)
    assert state.tenant_targets["strict"].cost_lambda == mine[-1]["cost_lambda"] < 0.2
    assert state.target.cost_lambda == rest[-1]["cost_lambda"] > 0.2
    assert "tenant strict's quality target 0.99" in mine[-1]["reason"]
    assert set(state.tenant_targets) == {"strict"}
    assert state.target.seen == 600 and state.tenant_targets["strict"].seen == 600  # "none" counted nowhere
    # Another instance's tenant λ is followed for that tenant only; one for an unknown tenant changes nothing.
    other, _ = fold.step(state, _strategy(cost_lambda=3.0, tenant="strict"))
    assert (other.tenant_targets["strict"].cost_lambda, other.target.cost_lambda) == (3.0, state.target.cost_lambda)
    stray, _ = fold.step(state, _strategy(cost_lambda=3.0, tenant="nobody"))
    assert stray.to_json() == state.to_json()
    back = MetaLearnerState.from_json(json.loads(json.dumps(state.to_json())))
    assert back.to_json() == state.to_json()


def test_a_tenants_lambda_routes_that_tenants_queries_only():
    _, h = _history(0.5)
    fold = RouterFold(Settings(cost_lambda=0.1), CAT, h, Embedder())
    state, _ = fold.step(fold.initialize(), _strategy(cost_lambda=0.7, tenant="acme"))
    assert (state.cost_lambda, state.tenant_lambdas) == (None, {"acme": 0.7})

    def lam(state, tenant: str) -> float:
        q = Event("query", {"query_id": "q", "text": "math x", "tenant": tenant, "ts_ms": 1}, "p.queries", (0, 1))
        return json.loads(fold.step(state, q)[1][0].record["plan"])["cost_lambda"]

    assert (lam(state, "acme"), lam(state, "beta")) == (0.7, 0.1)
    state, _ = fold.step(state, _strategy(cost_lambda=0.3))  # everyone's λ: the tenant keeps its own
    assert (lam(state, "acme"), lam(state, "beta")) == (0.7, 0.3)
    back = type(state).from_json(json.loads(json.dumps(state.to_json())))
    assert (back.cost_lambda, back.tenant_lambdas) == (0.3, {"acme": 0.7})


def test_the_tenant_split_of_the_bench_is_fixed_and_uses_every_tenant():
    from bench.tenant_targets import tenant_of
    from selfevolve.data.routerbench import Sample

    pick = tenant_of(["lax", "strict"])
    samples = [Sample(f"s{i}", "task", "test", "prompt", {}, {}, {}) for i in range(200)]
    first = [pick(s) for s in samples]
    assert first == [pick(s) for s in samples] and 60 < first.count("lax") < 140


# --- the audit rate's calibration ----------------------------------------------------------------------------

def test_the_audit_rate_falls_after_calibration_and_the_router_follows_it():
    fold = _meta(quality_target=0.9, quality_audit_start_rate=0.3, quality_audit_rate=0.05,
                 quality_audit_calibration=10, quality_targets={"own": 0.9})
    assert fold.initialize().target.rate == fold.initialize().tenant_targets["own"].rate == 0.3
    events = []
    for i in range(200):  # audits due at 0.3 until 10 are counted, then at 0.05
        events.append(_answer(i, "cheap"))
        events.append(_verdict(i, "cheap", 1.0))
        events.append(_verdict(i, "sup", 1.0))
    state, outs = _run(fold, events)
    (drop,) = [o.record for o in outs if o.record["audit_rate"] == 0.05]
    assert drop["tenant"] is None and state.target.rate == 0.05 and "own" not in {o.record["tenant"] for o in outs}
    keys = [f"q{i}" for i in range(200)]
    tenth = [i for i, q in enumerate(keys) if audit_due(audit_key("t", q), 0.3)][9]
    later = sum(audit_due(audit_key("t", q), 0.05) for q in keys[tenth + 1:])
    assert state.target.audits == 10 + later  # after the drop only the base rate's audits count
    raised, _ = fold.step(state, _strategy(audit_rate=0.5))  # another's higher rate: it only falls
    assert raised.target.rate == 0.05
    _, h = _history(1.0)
    router = RouterFold(fold.settings, CAT, h, Embedder())
    rs, _ = router.step(router.initialize(), Event("strategy", drop))
    assert (rs.audit_rate, rs.tenant_audit_rates) == (0.05, {})
    r = router.router.with_audit_rates(rs.audit_rate, {"own": 0.01})
    assert (r.audit_rate_for("t"), r.audit_rate_for("own"), Router(fold.settings, CAT, h).audit_rate_for("own")) \
        == (0.05, 0.01, 0.3)
    back = type(rs).from_json(json.loads(json.dumps(rs.to_json())))
    assert back.audit_rate == 0.05


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "x"])
def test_a_strategy_event_with_a_bad_audit_rate_is_refused_before_anything_changes(bad):
    fold = RouterFold(Settings(quality_target=0.9), CAT, History(), Embedder())
    with pytest.raises(ValidationError):
        fold.step(fold.initialize(), _strategy(cost_lambda=0.5, audit_rate=bad))
