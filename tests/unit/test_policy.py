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
    """On a choice question two cheap answers that agree are likelier right than either: worth trying."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    rng = np.random.default_rng(0)
    acc = {"small": 0.7, "mid": 0.75, "big": 0.6, "sup": 0.95}
    for i in range(60):
        q = {m: float(rng.random() < a) for m, a in acc.items()}
        h.add(_at(0.99, base, i + 10), Record(f"p{i}", costs=dict(COST), quality=q))
    d = Router(Settings(), CAT, h, cost_lambda=0.1).route(RouteQuery("q", CHOICE, vector=_at(0.65, base)))
    assert d.strategy == HYBRID
    assert set(d.models) == {"small", "mid"}
    assert d.escalation == (("sup",),) and 0 < d.escalate_below < 1


def test_hybrid_with_a_cheap_best_model_calls_it_alone(world):
    """The strong model stays behind it as a net: only an answer that looks wrong reaches it."""
    base, h = world
    d = Router(Settings(), CAT, h, cost_lambda=0.1).route(RouteQuery("q", "t", vector=_at(0.65, base)))
    assert d.strategy == HYBRID and d.models == ("mid",)
    assert d.escalation == (("sup",),) and d.escalate_below < d.estimates["mid"]
    assert d.expected_total == pytest.approx(d.expected_cost)


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


# -- any pool size: weak-first with λ in the escalation (issue 15) -------------------------------------------
SUP = ModelSpec("sup", "replay", Role.SUPERVISOR, 3, cost_per_call=0.05)
ONE = Catalogue([SUP])
TWO = Catalogue([ModelSpec("cheap", "replay", Role.STUDENT, 0, cost_per_call=0.002), SUP])
ELEVEN = Catalogue([SUP] + [ModelSpec(f"m{i}", "replay", (Role.STUDENT, Role.TA, Role.TEACHER)[i % 3], i % 3,
                                      cost_per_call=0.001 * (1 + i) ** 1.5) for i in range(10)])
POOLS = {1: ONE, 2: TWO, 11: ELEVEN}


def _pool_history(cat: Catalogue, acc: dict[str, float], n: int = 60, seed: int = 0) -> tuple[np.ndarray, History]:
    """n queries near one direction with every model's verdict (right with probability acc[m])."""
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    h = History()
    rng = np.random.default_rng(seed)
    cost = {s.name: s.cost_per_call for s in cat.models}
    for i in range(n):
        q = {m: float(rng.random() < acc[m]) for m in cost}
        h.add(_at(0.99, base, i + 10), Record(f"p{i}", costs=dict(cost), quality=q))
    return base, h


HYBRID_SIM = 0.65  # θl <= similarity < θh: the cascade regime


@pytest.mark.parametrize("cheap_acc, lam, models, escalation", [
    (0.95, 0.1, ("cheap",), (("sup",),)),   # clears the bar: cheap first, sup if its answer looks wrong
    (0.60, 0.1, ("sup",), ()),              # bound to escalate: straight to sup, no wasted cheap call
    (0.95, 0.0, ("sup",), ()),              # λ=0: quality first
    (0.60, 5.0, ("cheap",), ()),            # sup not worth its price even against a wrong answer
])
def test_two_model_pool_weak_first(cheap_acc, lam, models, escalation):
    _, h = _pool_history(TWO, {"cheap": cheap_acc, "sup": 1.0}, n=200)
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    d = Router(Settings(), TWO, h, cost_lambda=lam).route(RouteQuery("q", "t", vector=_at(HYBRID_SIM, base)))
    assert d.strategy == HYBRID and d.models == models and d.escalation == escalation
    if escalation:
        # Escalate iff the confidence is under what sup is worth after its price: q̂(sup) - λ·1.
        assert d.escalate_below == pytest.approx(d.estimates["sup"] - lam, abs=1e-9)


def test_one_model_pool_always_calls_it_alone():
    base, h = _pool_history(ONE, {"sup": 0.9})
    for lam in (0.0, 0.1, 10.0):
        for sim in (0.95, HYBRID_SIM, 0.2):
            d = Router(Settings(), ONE, h, cost_lambda=lam).route(RouteQuery("q", "t", vector=_at(sim, base)))
            assert d.models == ("sup",) and d.escalation == ()


def test_eleven_model_pool_checks_two_cheap_voters_first_on_a_choice_question():
    acc = {"sup": 0.95, **{f"m{i}": 0.55 + 0.03 * i for i in range(10)}}
    base, h = _pool_history(ELEVEN, acc, n=120)
    router = Router(Settings(), ELEVEN, h, cost_lambda=0.1)
    d = router.route(RouteQuery("q", CHOICE, vector=_at(HYBRID_SIM, base)))
    assert d.strategy == HYBRID and len(d.models) == 2 and d.escalation == (("sup",),)
    assert all(d.costs[m] <= 0.25 * d.costs["sup"] for m in d.models)
    # Code or free text: two answers cannot vote, and no cheap model alone clears the bar: sup directly.
    assert router.route(RouteQuery("q", "Write a python function to add two numbers.",
                                   vector=_at(HYBRID_SIM, base))).models == ("sup",)


CHOICE = "Which is a mammal?\nA) trout\nB) whale\nC) shark\nD) eel\nAnswer:"


@pytest.mark.parametrize("answer, escalated", [("B", False), ("I am not sure, maybe a fish", True)])
def test_weak_first_escalates_only_when_the_cheap_answer_looks_wrong(answer, escalated):
    from selfevolve.scoring import arbiter

    _, h = _pool_history(TWO, {"cheap": 0.95, "sup": 1.0}, n=200)
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    d = Router(Settings(), TWO, h, cost_lambda=0.1).route(RouteQuery("q", CHOICE, vector=_at(HYBRID_SIM, base)))
    state, out = arbiter.start(d)
    assert [c.model for c in out] == ["cheap"]
    state, out = arbiter.step(state, arbiter.Response("q", "cheap", answer, True, 0.002, 0))
    assert [getattr(o, "model", None) for o in out if isinstance(o, arbiter.Call)] == (["sup"] if escalated else [])


def test_router_knobs_come_from_settings_unless_overridden():
    s = Settings(router_prior_strength=5.0, router_explore=0.0, router_cheap_ratio=0.5, router_max_parallel=2,
                 knn_k=50)
    r = Router(s, TWO, History())
    assert (r.prior_strength, r.explore, r.cheap_ratio, r.max_parallel, r.k) == (5.0, 0.0, 0.5, 2, 50)
    r = Router(s, TWO, History(), explore=0.3, k=7)
    assert (r.explore, r.k, r.prior_strength) == (0.3, 7, 5.0)
    with pytest.raises(ConfigError):
        Router(s, TWO, History(), cost_lambda=-1.0)


def test_the_predictor_is_the_prior_where_neighbours_are_few():
    """A model right on one side of the embedding space and wrong on the other: with k=1 the estimate
    for a query on each side follows the predictor trained from the verdicts, not the global mean."""
    h = History()
    rng = np.random.default_rng(0)
    left, right = np.zeros(384, np.float32), np.zeros(384, np.float32)
    left[0], right[1] = 1, 1
    cost = {"cheap": 0.002, "sup": 0.05}
    for i in range(150):
        side = i % 2
        v = _at(0.95, left if side == 0 else right, i + 10)
        h.add(v, Record(f"p{i}", costs=dict(cost), quality={"cheap": float(side == 0), "sup": 1.0}))
    r = Router(Settings(), TWO, h, k=1, cost_lambda=0.1)
    on_left = r.route(RouteQuery("a", "t", vector=_at(0.9, left, 999))).estimates["cheap"]
    on_right = r.route(RouteQuery("b", "t", vector=_at(0.9, right, 998))).estimates["cheap"]
    assert on_left > 0.75 and on_right < 0.25


_pool = st.sampled_from(sorted(POOLS))
_sim = st.sampled_from([0.95, HYBRID_SIM, 0.2])


def _random_world(pool: int, seed: int):
    rng = np.random.default_rng(seed)
    cat = POOLS[pool]
    acc = {s.name: float(rng.uniform(0.3, 0.99)) for s in cat.models}
    base, h = _pool_history(cat, acc, n=40, seed=seed)
    return cat, base, h


@settings(max_examples=30, deadline=None)
@given(pool=_pool, seed=st.integers(0, 10_000), sim=_sim, lam=st.floats(0.0, 20.0))
def test_never_routes_to_an_unknown_model(pool, seed, sim, lam):
    cat, base, h = _random_world(pool, seed)
    d = Router(Settings(), cat, h, cost_lambda=lam).route(RouteQuery("q", "t", vector=_at(sim, base, seed)))
    names = {s.name for s in cat.active()}
    assert d.models and set(d.models) <= names
    assert all(set(stage) <= names for stage in d.escalation) and set(d.estimates) == names


@settings(max_examples=30, deadline=None)
@given(pool=_pool, seed=st.integers(0, 10_000), sim=_sim)
def test_huge_lambda_never_escalates_to_a_dearer_model(pool, seed, sim):
    from selfevolve.scoring import arbiter

    cat, base, h = _random_world(pool, seed)
    d = Router(Settings(), cat, h, cost_lambda=1e6).route(RouteQuery("q", CHOICE, vector=_at(sim, base, seed)))
    assert d.escalation == ()
    # Only a failed call may reach a dearer model (its fallback); answers that came back end the query.
    state, out = arbiter.start(d)
    for c in list(out):
        state, out = arbiter.step(state, arbiter.Response("q", c.model, "A", True, d.costs[c.model], 0))
    assert isinstance(out[-1], arbiter.Verdict) and set(out[-1].models_called) == set(d.models)


@settings(max_examples=30, deadline=None)
@given(pool=_pool, seed=st.integers(0, 10_000), sim=_sim)
def test_lambda_zero_is_quality_first(pool, seed, sim):
    cat, base, h = _random_world(pool, seed)
    d = Router(Settings(), cat, h, cost_lambda=0.0, explore=0.0).route(RouteQuery("q", "t", vector=_at(sim, base, seed)))
    best = max(d.estimates.values())
    if d.strategy == TARGETED:
        assert d.estimates[d.models[0]] == best
    elif d.strategy == HYBRID:
        # The best model answers first, or checks the cheap answers whenever they are less sure than it.
        first_best = max(d.estimates[m] for m in d.models) == best
        assert first_best or d.escalation  # cheap voters first only with the strong model behind them


@settings(max_examples=30, deadline=None)
@given(pool=_pool, seed=st.integers(0, 10_000), sim=_sim,
       lams=st.lists(st.floats(0.0, 5.0), min_size=2, max_size=6))
def test_cost_falls_as_lambda_rises_on_a_fixed_history(pool, seed, sim, lams):
    cat, base, h = _random_world(pool, seed)
    router = Router(Settings(), cat, h)
    for text in ("t", CHOICE):
        q = RouteQuery("q", text, vector=_at(sim, base, seed))
        plans = [router.with_lambda(lam).route(q) for lam in sorted(lams)]
        for a, b in zip(plans, plans[1:]):
            # What a plan is expected to spend, escalations at their estimated chance, falls as λ rises.
            assert b.expected_total <= a.expected_total + 1e-12
            if a.escalation and b.escalation and a.escalation == b.escalation:
                assert b.escalate_below <= a.escalate_below + 1e-12  # a dearer λ escalates less readily


def test_escalation_goes_up_the_hierarchy_even_when_a_cheap_model_looks_better():
    """The supervisor is called on the hardest queries, so its estimate can sink below a cheap model's:
    the cheap model answers, and the supervisor stays behind it as the escalation."""
    _, h = _pool_history(TWO, {"cheap": 0.97, "sup": 0.85}, n=200)
    base = np.zeros(384, dtype=np.float32)
    base[0] = 1
    d = Router(Settings(), TWO, h, cost_lambda=0.1).route(RouteQuery("q", "t", vector=_at(HYBRID_SIM, base)))
    assert d.estimates["cheap"] > d.estimates["sup"]
    assert d.models == ("cheap",) and d.escalation == (("sup",),)
