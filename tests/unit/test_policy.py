"""Router: the three regimes, runtime thresholds and catalogue, cost-awareness and budget limits."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.config import Settings
from selfevolve.routing.cost import TenantBudgets
from selfevolve.errors import ConfigError
from selfevolve.routing.history import History, Record
from selfevolve.routing import HYBRID, PARALLEL, TARGETED, RouteQuery, Router

CAT = Catalogue([
    ModelSpec("small", "replay", Role.STUDENT, 0, cost_per_call=0.001),
    ModelSpec("mid", "replay", Role.TA, 1, cost_per_call=0.002),
    ModelSpec("big", "replay", Role.TEACHER, 2, cost_per_call=0.01),
    ModelSpec("sup", "replay", Role.SUPERVISOR, 3, cost_per_call=0.05),
])
COST = {"small": 0.001, "mid": 0.002, "big": 0.01, "sup": 0.05}


def _at(sim: float, base: np.ndarray, seed: int = 1) -> np.ndarray:
    """A unit vector with cosine `sim` to base."""
    w = np.random.default_rng(seed).standard_normal(base.size).astype(np.float32)
    w -= (w @ base) * base
    w /= np.linalg.norm(w)
    return (sim * base + np.sqrt(1 - sim**2) * w).astype(np.float32)


@pytest.fixture
def world():
    """A history of 30 near-identical queries where 'mid' was always right and 'small' always wrong."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    for i in range(30):
        q = {"small": 0.0, "mid": 1.0, "big": 1.0, "sup": 1.0}
        h.add(_at(0.99, base, i + 10), Record(f"p{i}", costs=dict(COST), quality=q))
    return base, h


@pytest.mark.parametrize("sim, strategy", [(0.95, TARGETED), (0.65, HYBRID), (0.2, PARALLEL)])
def test_similarity_picks_the_regime(world, sim, strategy):
    base, h = world
    d = Router(Settings(), CAT, h, cost_lambda=0.5).route(RouteQuery("q", "text", vector=_at(sim, base)))
    assert d.strategy == strategy
    assert d.similarity == pytest.approx(sim * 0.99, abs=0.05)


def test_targeted_calls_the_best_value_model_alone(world):
    base, h = world
    d = Router(Settings(), CAT, h, cost_lambda=0.5).route(RouteQuery("q", "t", vector=base))
    assert d.models == ("mid",) and d.escalation == ()


def test_without_cost_awareness_quality_ties_go_to_the_cheaper(world):
    base, h = world
    d = Router(Settings(), CAT, h, cost_lambda=0.0).route(RouteQuery("q", "t", vector=base))
    assert d.models == ("mid",)


def test_parallel_calls_one_model_per_role(world):
    base, h = world
    d = Router(Settings(), CAT, h).route(RouteQuery("q", "t", vector=_at(0.1, base)))
    assert set(d.models) == {"small", "mid", "big", "sup"}


def test_hybrid_checks_two_cheap_models_and_escalates_to_the_best():
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    rng = np.random.default_rng(0)
    acc = {"small": 0.7, "mid": 0.75, "big": 0.6, "sup": 0.95}
    for i in range(60):
        q = {m: float(rng.random() < a) for m, a in acc.items()}
        h.add(_at(0.99, base, i + 10), Record(f"p{i}", costs=dict(COST), quality=q))
    d = Router(Settings(), CAT, h, cost_lambda=0.1).route(RouteQuery("q", "t", vector=_at(0.65, base)))
    assert d.strategy == HYBRID
    assert set(d.models) == {"small", "mid"}
    assert d.escalation == (("sup",),) and 0 < d.escalate_below < 1


def test_hybrid_with_a_cheap_best_model_calls_it_alone(world):
    base, h = world
    d = Router(Settings(), CAT, h, cost_lambda=0.1).route(RouteQuery("q", "t", vector=_at(0.65, base)))
    assert d.strategy == HYBRID and d.models == ("mid",) and d.escalation == ()


def test_thresholds_update_at_runtime(world):
    base, h = world
    r = Router(Settings(), CAT, h)
    q = RouteQuery("q", "t", vector=_at(0.7, base))
    assert r.route(q).strategy == HYBRID
    assert r.with_thresholds(0.6, 0.3).route(q).strategy == TARGETED
    assert r.with_thresholds(0.95, 0.9).route(q).strategy == PARALLEL
    with pytest.raises(ConfigError):
        r.with_thresholds(0.4, 0.6)


def test_updated_catalogue_is_obeyed(world):
    base, h = world
    smaller = Catalogue([s for s in CAT.models if s.name != "mid"])
    d = Router(Settings(), CAT, h).with_catalogue(smaller).route(RouteQuery("q", "t", vector=base))
    assert "mid" not in d.models and "mid" not in d.estimates


def test_per_query_budget_caps_the_plan(world):
    base, h = world
    s = Settings(budget_per_query_usd=0.004)
    d = Router(s, CAT, h).route(RouteQuery("q", "t", vector=_at(0.1, base)))
    assert sum(COST[m] for m in d.models) <= 0.004 and d.models
    assert d.max_cost <= 0.004


def test_exhausted_tenant_budget_gets_only_the_cheapest(world):
    base, h = world
    b = TenantBudgets({"acme": 0.01})
    b.charge("acme", 0.01)
    d = Router(Settings(), CAT, h, budgets=b).route(RouteQuery("q", "t", tenant="acme", vector=_at(0.1, base)))
    assert d.models == ("small",) and d.escalation == ()
    other = Router(Settings(), CAT, h, budgets=b).route(RouteQuery("q", "t", tenant="other", vector=_at(0.1, base)))
    assert len(other.models) == 4


def test_empty_history_explores_in_parallel():
    d = Router(Settings(), CAT, History()).route(RouteQuery("q", "t", vector=np.ones(384, np.float32)))
    assert d.strategy == PARALLEL and len(d.models) >= 2


@settings(max_examples=25, deadline=None)
@given(sims=st.lists(st.floats(min_value=-0.5, max_value=1.0), min_size=1, max_size=12),
       lam=st.sampled_from([0.0, 0.1, 0.5]))
def test_a_batch_routes_each_query_as_it_would_alone(sims, lam):
    """route_many is one history search for many queries; each decision equals route() of that query."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    for i in range(30):
        q = {"small": float(i % 3 == 0), "mid": 1.0, "big": float(i % 2), "sup": 1.0}
        h.add(_at(0.9, base, i + 10), Record(f"p{i}", costs=dict(COST), quality=q))
    router = Router(Settings(), CAT, h, cost_lambda=lam)
    queries = [RouteQuery(f"q{i}", "t", vector=_at(max(min(s, 0.999), -0.999), base, i)) for i, s in enumerate(sims)]
    assert router.route_many(queries) == [router.route(q) for q in queries]


@settings(max_examples=20, deadline=None)
@given(picks=st.lists(st.integers(0, 2), min_size=1, max_size=10))
def test_a_batch_with_a_catalogue_per_query_routes_each_as_that_view_would(picks):
    """The stream router places a batch across domains, each with its own catalogue view, in one search."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    for i in range(30):
        h.add(_at(0.9, base, i + 10), Record(f"p{i}", costs=dict(COST), quality={"mid": 1.0, "small": 0.0}))
    specs = list(CAT.active())
    views = [CAT, Catalogue([s for s in specs if s.name != "mid"]), Catalogue([s for s in specs if s.name != "sup"])]
    router = Router(Settings(), CAT, h, cost_lambda=0.1)
    queries = [RouteQuery(f"q{i}", "t", vector=_at(0.3 + 0.06 * i, base, i)) for i in range(len(picks))]
    got = router.route_many(queries, catalogues=[views[p] for p in picks])
    assert got == [router.with_catalogue(views[p]).route(q) for p, q in zip(picks, queries)]


def test_a_catalogue_per_query_must_match_the_queries():
    router = Router(Settings(), CAT, History())
    with pytest.raises(ConfigError, match="2 catalogues for 1 queries"):
        router.route_many([RouteQuery("q", "t", vector=np.ones(384, np.float32))], catalogues=[CAT, CAT])
