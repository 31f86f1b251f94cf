"""The similarity router: per-query quality estimates (kNN verdicts over a learned prior), minus λ·cost, pick the plan."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from selfevolve.models.catalogue import Catalogue, Role, estimate_cost
from selfevolve.config import Settings
from selfevolve.routing.cost import TenantBudgets, fit_budget
from selfevolve.errors import ConfigError
from selfevolve.routing.history import History
from selfevolve.routing.linear import normalize
from selfevolve.routing.plans import Plan, Prices, best_plan
from selfevolve.routing.target import audit_due, audit_key
from selfevolve.scoring import checkers

TARGETED, HYBRID, PARALLEL = "targeted", "hybrid", "parallel"
# Pseudo-verdicts pulling a model's global mean to 1/2. Kept small: a strong pull would hide a rarely
# called but excellent model (the supervisor) behind a cheap one we call every time.
GLOBAL_STRENGTH = 2.0
# Cheap models a cascade considers (singly and in pairs): the best few by optimistic value.
CANDIDATES = 4
# A lone strong call is shadowed by a cheap model until this many (similarity-weighted) verdicts of that
# model are among the query's neighbours: enough for its local estimate to lean on evidence, not its prior.
SHADOW_UNTIL = 3.0


def choices(text: str) -> int:
    """Options of a multiple-choice question (0 for any other): two cheap answers can be checked against
    each other only there."""
    return len(checkers.options(text)) if checkers.kind(text) == checkers.CHOICE else 0


@dataclass(frozen=True)
class RouteQuery:
    """What the router needs of a query; vector is its embedding when the caller already has it."""

    query_id: str
    text: str
    tenant: str = "default"
    vector: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Decision:
    """The plan for one query. escalation holds the later cascade stages (hybrid only)."""

    query_id: str
    tenant: str
    text: str
    strategy: str
    similarity: float
    models: tuple[str, ...]
    escalation: tuple[tuple[str, ...], ...]
    escalate_below: float  # the arbiter escalates when its best confidence is under this
    expected_cost: float  # first stage; max_cost adds every escalation stage
    max_cost: float
    budget: float | None
    estimates: dict[str, float]  # posterior quality per model on similar past queries (its confidence)
    costs: dict[str, float]  # expected USD per call
    fallbacks: dict[str, str]  # model -> next tier, when a call fails
    reason: str
    theta_high: float
    theta_low: float
    cost_lambda: float
    # USD the plan is expected to spend, each escalation counted at its estimated chance (plans.py).
    expected_total: float = 0.0


@dataclass(frozen=True)
class Estimate:
    mean: float
    n: float  # weighted verdict count in the neighbourhood
    cost: float
    n_global: int = 0  # verdicts over the whole history


class Router:
    """route(query) -> Decision. Immutable: with_* return an updated copy (thresholds, λ, catalogue).
    The knobs (k, prior_strength, max_parallel, explore, cheap_ratio) come from settings; a keyword that
    is not None overrides its setting (the benchmark's ablations). use_predictor=False leaves the kNN
    verdicts over each model's global mean (the estimates before issue 15)."""

    def __init__(self, settings: Settings, catalogue: Catalogue, history: History, embedder=None, *,
                 theta_high: float | None = None, theta_low: float | None = None,
                 cost_lambda: float | None = None, budgets: TenantBudgets | None = None,
                 k: int | None = None, prior_strength: float | None = None, max_parallel: int | None = None,
                 explore: float | None = None, use_similarity: bool = True, cascade: bool = True,
                 cheap_ratio: float | None = None, use_predictor: bool = True,
                 shadow_ratio: float | None = None) -> None:
        self.settings, self.catalogue, self.history, self.embedder = settings, catalogue, history, embedder
        self.theta_high = settings.theta_high if theta_high is None else theta_high
        self.theta_low = settings.theta_low if theta_low is None else theta_low
        if not 0.0 <= self.theta_low <= self.theta_high:
            raise ConfigError(f"need 0 <= θl <= θh (θh > 1 turns targeted off), got θl={self.theta_low} θh={self.theta_high}")
        self.cost_lambda = settings.cost_lambda if cost_lambda is None else cost_lambda
        if self.cost_lambda < 0:
            raise ConfigError(f"cost λ must be >= 0, got {self.cost_lambda}")
        self.budgets = budgets if budgets is not None else TenantBudgets()
        self.k = settings.knn_k if k is None else k

        def knob(value, name):
            return getattr(settings, name) if value is None else value

        self.prior_strength = knob(prior_strength, "router_prior_strength")
        self.max_parallel = knob(max_parallel, "router_max_parallel")
        self.explore = knob(explore, "router_explore")
        self.cheap_ratio = knob(cheap_ratio, "router_cheap_ratio")
        self.shadow_ratio = knob(shadow_ratio, "router_shadow_ratio")
        self.use_similarity, self.cascade, self.use_predictor = use_similarity, cascade, use_predictor
        # Audits measure the quality a target is relative to: only a tenant held to a target pays for them, at
        # its calibration rate until the meta-learner lowers it (a strategy event).
        self.audit_rate = settings.audit_start_rate
        self.tenant_audit_rates: dict[str, float] = {}
        # λ per tenant, for tenants whose own quality target moved it (a strategy event); others: cost_lambda.
        self.tenant_lambdas: dict[str, float] = {}

    def _copy(self, **changes) -> Router:
        new = object.__new__(Router)
        new.__dict__.update(self.__dict__, **changes)
        return new

    def with_thresholds(self, theta_high: float, theta_low: float) -> Router:
        if not 0.0 <= theta_low <= theta_high:
            raise ConfigError(f"need 0 <= θl <= θh (θh > 1 turns targeted off), got θl={theta_low} θh={theta_high}")
        return self._copy(theta_high=theta_high, theta_low=theta_low)

    def with_lambda(self, cost_lambda: float) -> Router:
        if cost_lambda < 0:
            raise ConfigError(f"cost λ must be >= 0, got {cost_lambda}")
        return self._copy(cost_lambda=cost_lambda)

    def with_tenant_lambdas(self, lambdas: dict[str, float]) -> Router:
        if any(lam < 0 for lam in lambdas.values()):
            raise ConfigError(f"cost λ must be >= 0, got {lambdas}")
        return self._copy(tenant_lambdas=dict(lambdas))

    def with_audit_rates(self, rate: float | None, tenants: dict[str, float]) -> Router:
        """Audit rates from strategy events: everyone's (None: the start rate) and per tenant."""
        return self._copy(audit_rate=self.settings.audit_start_rate if rate is None else rate,
                          tenant_audit_rates=dict(tenants))

    def audit_rate_for(self, tenant: str) -> float:
        """The fraction of `tenant`'s queries audited: 0 without a target, else its target's rate now."""
        if self.settings.target_for(tenant) is None:
            return 0.0
        if tenant in self.settings.quality_targets:
            return self.tenant_audit_rates.get(tenant, self.settings.audit_start_rate)
        return self.audit_rate

    def lambda_for(self, tenant: str) -> float:
        """The λ a query of `tenant` is routed with: its own target's operating point, else cost_lambda."""
        return self.tenant_lambdas.get(tenant, self.cost_lambda)

    def with_catalogue(self, catalogue: Catalogue) -> Router:
        return self._copy(catalogue=catalogue)

    # -- estimates -------------------------------------------------------------------------------
    def _estimates(self, neighbours, names: list[str], predicted: dict[str, float] | None = None) -> dict[str, Estimate]:
        """Beta posterior per model: a prior of strength prior_strength, updated by the neighbours' verdicts.
        The prior is the predictor's quality for this query (predicted) once the model has verdicts, else
        the model's global mean: the kNN counts then correct a smooth estimate locally (notes/h8)."""
        # One pass over the neighbours: each record names only the few models it called.
        wanted = set(names)
        q_sums: dict[str, list[float]] = {}  # model -> [Σ w·q, Σ w·(1-q), Σ w]
        c_sums: dict[str, list[float]] = {}  # model -> [Σ w·cost, Σ w]
        for rec, sim in neighbours:
            w = max(sim, 0.0)
            for m, q in rec.quality.items():
                if q is not None and m in wanted:
                    acc = q_sums.setdefault(m, [0.0, 0.0, 0.0])
                    acc[0] += w * q
                    acc[1] += w * (1 - q)
                    acc[2] += w
            for m, c in rec.costs.items():
                if m in wanted:
                    acc = c_sums.setdefault(m, [0.0, 0.0])
                    acc[0] += w * c
                    acc[1] += w
        out = {}
        for m in names:
            g_mean, g_n, g_cost = self.history.model_mean(m)
            # The global mean is itself shrunk to 1/2: one lucky verdict must not make a model look perfect.
            prior = (0.5 * GLOBAL_STRENGTH + (g_mean or 0.0) * g_n) / (GLOBAL_STRENGTH + g_n)
            if predicted is not None and m in predicted:
                prior = predicted[m]
            cost = g_cost if g_cost is not None else estimate_cost(self.catalogue.get(m), 500, 200)
            qa, qb, n = q_sums.get(m, (0.0, 0.0, 0.0))
            a, b = self.prior_strength * prior + qa, self.prior_strength * (1 - prior) + qb
            csum, cn = c_sums.get(m, (0.0, 0.0))
            # Costs scale with prompt length, so the neighbours' real costs beat the global mean.
            out[m] = Estimate(a / (a + b), n, csum / cn if cn > 0 else cost, g_n)
        return out

    def _reference_cost(self, est: dict[str, Estimate]) -> float:
        sups = [s.name for s in self.catalogue.active() if s.role == Role.SUPERVISOR and s.name in est]
        ref = max((est[m].cost for m in sups), default=0.0) or max((e.cost for e in est.values()), default=0.0)
        return ref if ref > 0 else 1.0

    # -- the policy ------------------------------------------------------------------------------
    def route(self, query: RouteQuery) -> Decision:
        return self.route_many([query])[0]

    def route_many(self, queries: list[RouteQuery],
                   catalogues: list[Catalogue] | None = None) -> list[Decision]:
        """route() for each query, with one embedding call and one history search for all of them. The
        queries do not see each other: a query joins the history only once its answer is delivered.
        catalogues, if given, is each query's own view (its domain's roles), as with_catalogue() would set."""
        if not queries:
            return []
        if catalogues is not None and len(catalogues) != len(queries):
            raise ConfigError(f"{len(catalogues)} catalogues for {len(queries)} queries")
        routers = self._per_query(catalogues, len(queries))
        if not self.use_similarity:
            return [r._decide(q, []) for r, q in zip(routers, queries)]
        missing = [i for i, q in enumerate(queries) if q.vector is None]
        if missing and self.embedder is None:
            raise ConfigError("the router needs an embedder or a query vector")
        fresh = dict(zip(missing, self.embedder.encode([queries[i].text for i in missing]))) if missing else {}
        vecs = np.stack([fresh[i] if q.vector is None else q.vector for i, q in enumerate(queries)])
        # One search for the batch: FAISS takes its BLAS path from 20 queries up, ~9x faster per query.
        found = self.history.search_many(vecs, self.k)
        names = sorted({s.name for r in routers for s in r.catalogue.active()})
        known = [m for m in names if self.use_predictor and self.history.predictor.count(m) > 0]
        means = self.history.predictor.mean(normalize(vecs), known) if known else np.zeros((len(queries), 0))
        return [r._decide(q, nb, dict(zip(known, map(float, row))))
                for r, q, nb, row in zip(routers, queries, found, means)]

    def _per_query(self, catalogues: list[Catalogue] | None, n: int) -> list[Router]:
        if catalogues is None:
            return [self] * n
        views: dict[int, Router] = {}
        return [views.setdefault(id(c), self.with_catalogue(c)) for c in catalogues]

    def _decide(self, query: RouteQuery, neighbours: list, predicted: dict[str, float] | None = None) -> Decision:
        active = [s for s in self.catalogue.active()]
        if not active:
            raise ConfigError("the catalogue has no active model")
        names = [s.name for s in active]
        s = neighbours[0][1] if neighbours else 0.0
        est = self._estimates(neighbours, names, predicted)
        ref = self._reference_cost(est)
        lam = self.lambda_for(query.tenant)

        def util(m: str) -> float:
            return est[m].mean - lam * est[m].cost / ref

        strategy, plan, why = self._plan(query, s, active, est, util)
        plan, why = self._shadow(plan, why, est, util)
        plan, why = self._audit(query, plan, why, est)
        cap = self._cap(query.tenant)
        costs = {m: est[m].cost for m in names}
        first = fit_budget(list(plan.first), costs, cap)
        spent = sum(costs[m] for m in first)
        escalation = plan.escalation
        if cap is not None:
            kept = []
            for stage in escalation:
                if spent + sum(costs[m] for m in stage) > cap:
                    break
                kept.append(stage)
                spent += sum(costs[m] for m in stage)
            escalation = tuple(kept)
        expected = float(sum(costs[m] for m in first))
        total = plan.expected_cost if (tuple(first), escalation) == (plan.first, plan.escalation) else float(spent)
        return Decision(
            query_id=query.query_id, tenant=query.tenant, text=query.text, strategy=strategy,
            similarity=float(s), models=tuple(first), escalation=escalation,
            escalate_below=float(plan.escalate_below if escalation else 0.0),
            expected_cost=expected, max_cost=float(spent), budget=cap,
            estimates={m: float(est[m].mean) for m in names}, costs=costs, fallbacks=self.catalogue.fallbacks(),
            reason=why + ("" if cap is None else f"; budget ${cap:.6f}"),
            theta_high=self.theta_high, theta_low=self.theta_low, cost_lambda=lam, expected_total=float(total))

    def _plan(self, query: RouteQuery, s: float, active, est, util) -> tuple[str, Plan, str]:
        """The regime by similarity, then its plan: targeted = the best model by optimistic value alone,
        hybrid = the best cascade (_cascade), parallel = one model per role (exploration)."""
        names = [x.name for x in active]
        if not self.use_similarity:
            strategy = HYBRID if self.cascade else TARGETED
        elif s >= self.theta_high:
            strategy = TARGETED
        elif s < self.theta_low:
            strategy = PARALLEL
        else:
            strategy = HYBRID if self.cascade else TARGETED
        if strategy == TARGETED:
            best = min(names, key=lambda m: (-self._ucb(est, util, m), est[m].cost, m))
            plan = Plan((best,), (), 0.0, util(best), est[best].cost)
            return strategy, plan, f"s={s:.2f}>=θh: best neighbour model {best} (q̂={est[best].mean:.2f})"
        if strategy == HYBRID:
            plan = self._cascade(names, est, util, choices(query.text))
            return strategy, plan, (f"θl<=s={s:.2f}<θh: {list(plan.first)} first, then "
                                    f"{[e[0] for e in plan.escalation]} if confidence < {plan.escalate_below:.2f}"
                                    f" (value {plan.value:.3f})")
        first = self._parallel(active, est, util)
        plan = Plan(tuple(first), (), 0.0, 0.0, sum(est[m].cost for m in first))
        return strategy, plan, f"s={s:.2f}<θl: explore one model per role {first}"

    def _shadow(self, plan: Plan, why: str, est: dict[str, Estimate], util) -> tuple[Plan, str]:
        """A plan calling the top model alone also calls the best cheap model (at most shadow_ratio of top's
        price): its verdict there teaches the router where the cheap model would have done. Without it only
        the strong model is judged on those queries, the cheap model's estimate there stays its prior, and
        the router cannot tell which of them the cheap model could take (feedback comes for models called)."""
        if self.shadow_ratio <= 0.0 or len(plan.first) != 1 or plan.escalation:
            return plan, why
        rank = {x.name: x.role.rank for x in self.catalogue.active()}
        top = plan.first[0]
        if rank.get(top) != max(rank.values()):
            return plan, why
        cheap = [m for m in est if m != top and est[m].cost <= self.shadow_ratio * est[top].cost]
        if not cheap:
            return plan, why
        c = max(cheap, key=lambda m: (self._ucb(est, util, m), -est[m].cost, m))
        if est[c].n >= SHADOW_UNTIL:
            return plan, why  # its verdicts on queries like this one are known already: no need to pay
        return replace(plan, first=(c, top), expected_cost=plan.expected_cost + est[c].cost), why + f"; {c} shadows"

    def _audit(self, query: RouteQuery, plan: Plan, why: str, est: dict[str, Estimate]) -> tuple[Plan, str]:
        """An audited query (a fixed fraction, by hash of tenant/id: target.audit_due) also calls the
        dearest supervisor in its first stage, so that its verdict arrives: a uniform sample of the
        supervisor's quality, which the quality target is relative to. Its later stages then skip it."""
        rate = self.audit_rate_for(query.tenant)
        if rate <= 0.0 or not audit_due(audit_key(query.tenant, query.query_id), rate):
            return plan, why
        sups = [x for x in self.catalogue.active() if x.role == Role.SUPERVISOR]
        if not sups:
            return plan, why
        sup = max(sups, key=lambda x: (x.cost_per_call or 0.0, x.name)).name
        if sup in plan.first:
            return plan, why + "; audited"
        stages = tuple(st for st in plan.escalation if sup not in st)
        return (replace(plan, first=plan.first + (sup,), escalation=stages, escalate_below=plan.escalate_below
                        if stages else 0.0, expected_cost=plan.expected_cost + est[sup].cost),
                why + f"; audited: {sup} called too")

    def _ucb(self, est, util, m: str) -> float:
        # Optimism shrinking with the model's verdict count: an untried model gets tried, then judged.
        return util(m) + self.explore / math.sqrt(est[m].n_global + 1)

    def _cascade(self, names, est, util, options: int) -> Plan:
        """Cheap first when that pays, the strong model (top) when the cheap answers fall short.

        Escalating gains about q̂(top) - confidence and costs λ·price(top)/ref, so the arbiter escalates iff
        confidence < util(top) = q̂(top) - λ·price(top)/ref: λ sets the bar. Of the plans (each model alone,
        each of the best cheap models weak-first, each pair of them voting on a choice question) the router
        takes the one worth most after its expected price, escalations counted at their estimated chance
        (selfevolve/routing/plans.py). With one cheap model that is weak-first or a model alone.

        top is the likeliest-right model of the hierarchy's highest role: up the hierarchy, as escalation
        goes. Not the likeliest-right of all: the strong model is called on the hardest queries (those the
        cheap ones fail), so its estimate is biased low and would hand escalations to a weaker model
        (notes/h8: 94.4% of GPT-4 at 0.20 of its cost against 92.6% at 0.19, RouterBench 11 models)."""
        rank = {x.name: x.role.rank for x in self.catalogue.active()}
        high = max(rank[m] for m in names)
        top = max((m for m in names if rank[m] == high), key=lambda m: (est[m].mean, -est[m].cost, m))
        cheap = [m for m in names if m != top and est[m].cost <= self.cheap_ratio * est[top].cost]
        # Optimism for thinly observed cheap models: exploring inside the cheap stage costs little.
        cheap = sorted(cheap, key=lambda m: (-self._ucb(est, util, m), est[m].cost, m))[:CANDIDATES]
        prices = Prices(q={m: est[m].mean for m in names}, price={m: est[m].mean - util(m) for m in names},
                        usd={m: est[m].cost for m in names}, bonus=lambda m: self._ucb(est, util, m) - util(m))
        return best_plan(names, top, cheap, util(top), options, prices)

    def _parallel(self, active, est, util) -> list[str]:
        """Best optimistic (UCB) model of each role, cheapest role first: exploration is paid for."""
        def ucb(m: str) -> float:
            return self._ucb(est, util, m)

        picks = []
        for role in sorted({s.role for s in active}):
            members = [s.name for s in active if s.role == role]
            picks.append(max(members, key=lambda m: (ucb(m), -est[m].cost)))
        if len(picks) > self.max_parallel:
            # Keep the supervisor-side picks: they are the answer of last resort.
            picks = picks[-self.max_parallel:]
        return picks

    def _cap(self, tenant: str) -> float | None:
        caps = [c for c in (self.settings.budget_per_query_usd, self.budgets.remaining(tenant)) if c is not None]
        return min(caps) if caps else None
