"""The router as a fold: queries in, one route decision out each, over domains, thresholds and the hierarchy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import hierarchy
from selfevolve.flow.events import Event, Out
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing import RouteQuery, Router, domains
from selfevolve.routing.history import History
from selfevolve.routing.answer_cache import AnswerCache, Entry, cache_key
from selfevolve.routing.pinning import PINNED, pin
from selfevolve.routing.reuse import cached
from selfevolve.wire.records import decision_record, source_of, vector_of
from selfevolve.wire.tenancy import DEFAULT_TENANT, record_key

STAGE = "route-decisions"


@dataclass
class RouterState:
    """What routing has learnt apart from the history: the domains queries fell into (domains.initialize's
    JSON value), the thresholds the meta-learner set, and the roles model events gave each domain.
    `views` caches each domain's catalogue for this hierarchy; a new hierarchy gets an empty cache."""

    domains: dict[str, Any]
    theta_high: float
    theta_low: float
    hierarchy: dict[str, Any]
    views: dict[int, Catalogue] = field(default_factory=dict, repr=False, compare=False)
    # The operating point a strategy event set (the quality target's controller); None: settings.cost_lambda.
    cost_lambda: float | None = None
    # Per tenant with a quality target of its own, the operating point its strategy events set.
    tenant_lambdas: dict[str, float] = field(default_factory=dict)
    # The audit rates the quality targets' calibration set (None / absent: settings' start rate).
    audit_rate: float | None = None
    tenant_audit_rates: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"domains": self.domains, "theta_high": self.theta_high, "theta_low": self.theta_low,
                "hierarchy": self.hierarchy, "cost_lambda": self.cost_lambda, "tenant_lambdas": self.tenant_lambdas,
                "audit_rate": self.audit_rate, "tenant_audit_rates": self.tenant_audit_rates}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouterState:
        try:
            return cls(domains=data["domains"], theta_high=float(data["theta_high"]),
                       theta_low=float(data["theta_low"]), hierarchy=data["hierarchy"],
                       cost_lambda=None if data.get("cost_lambda") is None else float(data["cost_lambda"]),
                       tenant_lambdas={str(t): operating_point(v)
                                       for t, v in (data.get("tenant_lambdas") or {}).items()},
                       audit_rate=None if data.get("audit_rate") is None else audit_rate(data["audit_rate"]),
                       tenant_audit_rates={str(t): audit_rate(v)
                                           for t, v in (data.get("tenant_audit_rates") or {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"not a router state snapshot: {e}") from e


def operating_point(lam: Any) -> float:
    """λ from a strategy event if the router can use it (a finite number >= 0), else ValidationError."""
    try:
        value = float(lam)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"cost λ must be a number, got {lam!r}") from e
    if not 0.0 <= value < float("inf"):
        raise ValidationError(f"cost λ must be finite and >= 0, got {lam}")
    return value


def audit_rate(rate: Any) -> float:
    """An audit rate from a strategy event if it is one (a number in [0, 1]), else ValidationError."""
    try:
        value = float(rate)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"audit rate must be a number, got {rate!r}") from e
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"audit rate must be in [0, 1], got {rate}")
    return value


def thresholds(theta_high: float, theta_low: float) -> tuple[float, float]:
    """(θh, θl) if they are a valid pair, else ValidationError: a strategy event must not break routing."""
    if not 0.0 <= theta_low <= theta_high:
        raise ValidationError(f"need 0 <= θl <= θh (θh > 1 turns targeted off), got θl={theta_low} θh={theta_high}")
    return float(theta_high), float(theta_low)


class RouterFold:
    """query -> route_decision; model_event -> the hierarchy; strategy -> the thresholds; history (a delivery)
    -> the domains.

    Domains are learnt from deliveries, in the history topic's one order, not from queries as they are
    routed: every serve worker folds the same deliveries, so all of them hold the same domains, whichever
    queries each routed. A query's placement is read only (on a copy): a query far from every domain gets
    the id the next new domain would get, which the delivery that creates it usually confirms.

    The environment: the base catalogue, the routing history (read only here: the history fold adds to
    it) and the embedder, a pure function of the text. A step never changes the state it is given: a
    step that raises leaves the caller's state as it was. A query's decision depends on the state, the
    history and the query only; decision_ms is latency, which the host may measure and pass in the
    event's payload ({"decision_ms": ms}); nothing is decided on it.
    """

    name = "router"
    consumes = ("query", "model_event", "strategy", "history")

    def __init__(self, settings: Settings, catalogue: Catalogue, history: History, embedder,
                 cache: AnswerCache | None = None) -> None:
        self.settings, self.catalogue, self.history, self.embedder = settings, catalogue, history, embedder
        self.router = Router(settings, catalogue, history, embedder)
        self.cache = cache  # read only here (peek): the answer-cache fold fills it from the history topic

    def initialize(self) -> RouterState:
        s = self.settings
        high, low = thresholds(s.theta_high, s.theta_low)
        return RouterState(domains=domains.initialize(s.domain_radius, s.max_domains), theta_high=high,
                           theta_low=low, hierarchy=hierarchy.from_catalogue(self.catalogue))

    def restore(self, snapshot: dict[str, Any] | None) -> RouterState:
        """The state a restarted worker starts from: the snapshot's domains (nothing else keeps them). The
        hierarchy and thresholds start from the catalogue and settings, as the model-events and strategy
        topics, which the worker reads from the start, rebuild them (a snapshot's would outlive a changed
        catalogue or setting)."""
        state = self.initialize()
        if snapshot is None:
            return state
        saved = snapshot["domains"] if "hierarchy" in snapshot else snapshot  # a pre-fold domains.json
        if not isinstance(saved, dict) or "centroids" not in saved:
            raise ValidationError("the router snapshot holds no domain state")
        return replace(state, domains=saved)

    def step(self, state: RouterState, event: Event) -> tuple[RouterState, list[Out]]:
        if event.kind == "query":
            return self.step_many(state, [event])
        if event.kind == "model_event":
            # apply() raises on an unknown kind before anything changed; a new hierarchy, new views.
            return replace(state, hierarchy=hierarchy.apply(state.hierarchy, event.record), views={}), []
        if event.kind == "strategy":
            high, low = thresholds(event.record["theta_high"], event.record["theta_low"])
            return replace(state, theta_high=high, theta_low=low, **self._operating_point(state, event.record)), []
        if event.kind == "history" and event.record.get("event") == "delivery":
            return self._learn_domain(state, event.record), []
        return state, []

    @staticmethod
    def _operating_point(state: RouterState, record: dict) -> dict[str, Any]:
        """The fields a strategy event changes: v2's cost_lambda and v3's audit_rate (None leaves each) are
        everyone's, or, with v3's tenant, that tenant's alone (its own quality target's)."""
        lam, rate, tenant = record.get("cost_lambda"), record.get("audit_rate"), record.get("tenant")
        lam = None if lam is None else operating_point(lam)  # both checked before either is set
        rate = None if rate is None else audit_rate(rate)
        out: dict[str, Any] = {}
        if lam is not None:
            out.update({"cost_lambda": lam} if tenant is None
                       else {"tenant_lambdas": {**state.tenant_lambdas, str(tenant): lam}})
        if rate is not None:
            out.update({"audit_rate": rate} if tenant is None
                       else {"tenant_audit_rates": {**state.tenant_audit_rates, str(tenant): rate}})
        return out

    def _learn_domain(self, state: RouterState, record: dict) -> RouterState:
        """The domains after one delivered query (its vector and text) joined them."""
        vector = vector_of(record)
        if vector is None or vector.shape != (self.history.dim,):
            # A centroid of another width would make every later query's placement raise.
            raise ValidationError(f"a delivery needs the query's {self.history.dim}-float vector to place it in "
                                  "a domain")
        learnt, _ = domains.assign_many(state.domains, vector[None, :], [record.get("text", "")])
        return replace(state, domains=learnt)

    def embed(self, queries: Sequence[dict]) -> np.ndarray:
        """The embeddings of query records, in one call (the host may run this off its event loop)."""
        return self.embedder.encode([q["text"] for q in queries])

    def step_many(self, state: RouterState, events: Sequence[Event],
                  vectors: np.ndarray | None = None) -> tuple[RouterState, list[Out]]:
        """step() over a batch of events, with one embedding call for its queries and one history search
        per run of consecutive queries: the same state and decisions as stepping them one by one (a query
        joins the history only once answered, so queries of a batch never saw each other anyway).
        `vectors`, if given, are the queries' embeddings (embed() of their records), in order."""
        queries = [e.record for e in events if e.kind == "query"]
        if vectors is None and queries:
            vectors = self.embed(queries)
        elif vectors is not None and len(vectors) != len(queries):
            raise ValidationError(f"{len(vectors)} vectors for {len(queries)} queries")
        outs: list[Out] = []
        run: list[Event] = []
        for event in events:
            if event.kind == "query":
                run.append(event)
                continue
            state, vectors = self._flush(state, run, vectors, outs)
            run = []
            state, _ = self.step(state, event)
        state, _ = self._flush(state, run, vectors, outs)
        return state, outs

    def _flush(self, state: RouterState, run: list[Event], vectors, outs: list[Out]):
        """Route a run of consecutive queries; returns the state after them and the vectors left over."""
        if not run:
            return state, vectors
        vecs, rest = vectors[:len(run)], vectors[len(run):]
        state, decided = self._route(state, run, np.asarray(vecs, dtype=np.float32))
        outs += decided
        return state, rest

    def _route(self, state: RouterState, run: list[Event], vecs: np.ndarray) -> tuple[RouterState, list[Out]]:
        queries = [e.record for e in run]
        # Read only (deliveries teach the domains), and each query alone: placed as a batch, a query would
        # see its batch-mates' domains, and its decision would depend on how the host cut the batches.
        placed = [domains.assign_many(state.domains, v[None, :])[1][0] for v in vecs]
        views = state.views
        # Each domain's own roles and activated students: evolution reaches routing at once.
        catalogues = [self._view(state, views, d) for d in placed]
        router = self.router.with_thresholds(state.theta_high, state.theta_low)
        router = router if state.cost_lambda is None else router.with_lambda(state.cost_lambda)
        router = router.with_tenant_lambdas(state.tenant_lambdas) if state.tenant_lambdas else router
        router = router.with_audit_rates(state.audit_rate, state.tenant_audit_rates)
        found = router.route_many([RouteQuery(q["query_id"], q["text"], q.get("tenant") or DEFAULT_TENANT, v)
                                   for q, v in zip(queries, vecs)], catalogues=catalogues)
        outs = []
        for event, q, d, domain, vec in zip(run, queries, found, placed, vecs):
            source = source_of(event.topic, *event.at) if event.at is not None else ""
            latency = (event.payload or {}).get("decision_ms", 0.0) if isinstance(event.payload, dict) else 0.0
            d = pin(d, q.get("metadata"), self.catalogue)  # a client-pinned model (the gateway's `model`)
            entry = self._cached(q, d)
            d = d if entry is None else cached(d, entry)
            record = decision_record(d, q.get("metadata") or {}, float(latency), int(q.get("ts_ms") or 0),
                                     domain, source, vector=vec)
            if entry is not None:
                record.update(cached_from=entry.query_id, cached_answer=entry.answer)
            # Keyed by (tenant, id): its requests and responses carry the same key, so share its partition.
            outs.append(Out("route_decision", record, record_key(q), STAGE))
        return state, outs  # its views cache was filled in place

    def _cached(self, query: dict, d) -> Entry | None:
        """The cached answer to an exact repeat of this tenant's query, if one is fresh (event time) and the
        client did not pin another model."""
        if self.cache is None:
            return None
        entry = self.cache.peek(query.get("tenant") or DEFAULT_TENANT, cache_key(query["text"]),
                                int(query.get("ts_ms") or 0))
        if entry is None or (d.strategy == PINNED and d.models != (entry.model,)):
            return None
        return entry

    def _view(self, state: RouterState, views: dict[int, Catalogue], domain: int) -> Catalogue:
        # The cache belongs to this hierarchy (model events replace it), and the view is a pure function of
        # (catalogue, hierarchy, domain): filling it in place cannot change what any state decides.
        if domain not in views:
            views[domain] = hierarchy.domain_catalogue(self.catalogue, state.hierarchy, domain)
        return views[domain]

