"""The meta-learner as a fold: every `metalearn_every` answers, nudge θh/θl toward the best strategy (Alg. 5.3);
with a quality target, move λ to meet it (selfevolve/routing/target.py).

Its clock is the answers it has counted, never the wall: the same answers and verdicts, in the same order,
move the thresholds at the same answers. Each strategy is scored over the last `metalearn_window` answers:
quality is the latest feedback verdict on the answering model where one has arrived, else the scorer's
composite; cost is what the answer cost in all (what metalearn.STRATEGY_SQL computes from the history store
for people to read; nothing here reads the store).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import metalearn
from selfevolve.flow.events import Event, Out
from selfevolve.flow.router import audit_rate, operating_point
from selfevolve.models.catalogue import Catalogue, Role
from selfevolve.routing import target as qt

STAGE = "strategy"
ECHOES_KEPT = 64  # own strategy events awaiting their copy from the topic
AUDITS_KEPT = 1024  # audited queries whose supervisor verdict was counted (a re-sent verdict is not again)
STRATEGY_VERSION = 3  # schemas/strategy.avsc: v2 adds cost_lambda (null: λ unchanged), v3 its tenant


@dataclass(frozen=True)
class Answered:
    """One answer the window holds: who answered which strategy's query in which domain, its composite and
    cost, and the latest verdict on the answering model (None until one arrives)."""

    tenant: str
    query_id: str
    model: str
    strategy: str
    domain: int
    composite: float
    cost_usd: float
    verdict: float | None = None

    @property
    def quality(self) -> float:
        return self.composite if self.verdict is None else self.verdict


@dataclass(frozen=True)
class MetaLearnerState:
    """The thresholds in force, answers counted (the cadence's clock), the last window of answers (oldest
    first) and this fold's own strategy events not yet read back from the topic (canonical JSON). With a
    quality target: the controller's state (target, for every tenant without a target of its own; None
    without one), one per tenant with its own (tenant_targets), and the audits already counted."""

    theta_high: float
    theta_low: float
    answers: int = 0
    window: tuple[Answered, ...] = ()
    echoes: tuple[str, ...] = ()
    target: qt.TargetState | None = None
    audited: tuple[str, ...] = ()
    tenant_targets: dict[str, qt.TargetState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"theta_high": self.theta_high, "theta_low": self.theta_low, "answers": self.answers,
                "window": [asdict(a) for a in self.window], "echoes": list(self.echoes),
                "target": None if self.target is None else qt.to_json(self.target), "audited": list(self.audited),
                "tenant_targets": {t: qt.to_json(v) for t, v in self.tenant_targets.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetaLearnerState:
        try:
            window = tuple(Answered(**a) for a in data["window"])
            target = data.get("target")
            return cls(float(data["theta_high"]), float(data["theta_low"]), int(data["answers"]), window,
                       tuple(str(e) for e in data["echoes"]), None if target is None else qt.from_json(target),
                       tuple(str(k) for k in data.get("audited", ())),
                       {str(t): qt.from_json(v) for t, v in (data.get("tenant_targets") or {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"not a meta-learner state: {e}") from e


def answered(record: dict[str, Any], verdict: float | None = None) -> Answered:
    """The window's entry for an answer record."""
    return Answered(str(record["tenant"]), str(record["query_id"]), str(record["model"]), str(record["strategy"]),
                    int(record["domain"]), float(record["composite"]), float(record["cost_usd"]), verdict)


def rows(window: tuple[Answered, ...]) -> list[dict[str, Any]]:
    """One row per (strategy, domain), as metalearn.pool reads them: n, mean quality, mean cost."""
    acc: dict[tuple[str, int], list[float]] = {}
    for a in window:
        sums = acc.setdefault((a.strategy, a.domain), [0, 0.0, 0.0])
        sums[0] += 1
        sums[1] += a.quality
        sums[2] += a.cost_usd
    return [{"strategy": s, "domain": d, "n": int(n), "quality": q / n, "cost": c / n}
            for (s, d), (n, q, c) in sorted(acc.items())]


def supervisor_price(catalogue: Catalogue) -> float | None:
    """The dearest active supervisor's price per call: the router's reference for cost, so λ means the same
    to both; None when no supervisor has a price."""
    prices = [s.cost_per_call or 0.0 for s in catalogue.active() if s.role == Role.SUPERVISOR]
    return max(prices, default=0.0) or None


def supervisor_name(catalogue: Catalogue) -> str | None:
    """The dearest active supervisor: the model the router's audits call and the target is relative to."""
    sups = [s for s in catalogue.active() if s.role == Role.SUPERVISOR]
    return max(sups, key=lambda s: (s.cost_per_call or 0.0, s.name)).name if sups else None


def _echo_key(record: dict[str, Any]) -> str:
    # The copy read back has the writer's version and the schema's defaults: compare what it says.
    said = {"domain": -1, "reason": "", "cost_lambda": None, "audit_rate": None, "tenant": None, **record}
    said.pop("version", None)
    return json.dumps(said, sort_keys=True, separators=(",", ":"))


class MetaLearnerFold:
    """answer -> (every `metalearn_every`) strategy; feedback -> the verdict on an answer (and, with a quality
    target, an observation of the quality ratio, which may move λ: a strategy event); strategy -> θ, λ.

    An answer already in the window (a redelivery) is not counted again. A verdict about an answer the
    window does not hold, or about another model than the one that answered, changes nothing. Its own
    strategy events set θ as they are made; their copy from the topic then changes nothing (an older copy
    read after a newer change would otherwise set θ back); anyone else's sets θ when read. Thresholds that
    tuning cannot start from (not 0 <= θl < θh <= 1) are refused. A step never changes its input state.
    """

    name = "metalearner"
    consumes = ("answer", "feedback", "strategy")

    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.cost_scale = supervisor_price(catalogue)
        self.supervisor = supervisor_name(catalogue)

    def initialize(self) -> MetaLearnerState:
        s = self.settings
        target = None if s.quality_target is None else self._controller(s.quality_target)
        own = {t: self._controller(v) for t, v in sorted(s.quality_targets.items()) if v is not None}
        return MetaLearnerState(*_thresholds(s.theta_high, s.theta_low), target=target, tenant_targets=own)

    def _controller(self, target: float) -> qt.TargetState:
        s = self.settings
        return qt.TargetState(target, s.cost_lambda, rate=s.audit_start_rate, base_rate=s.quality_audit_rate,
                              calibration=s.quality_audit_calibration)

    def step(self, state: MetaLearnerState, event: Event) -> tuple[MetaLearnerState, list[Out]]:
        if event.kind == "answer":
            return self._answer(state, event.record)
        if event.kind == "feedback":
            measured, outs = self._measure(state, event.record)
            return self._feedback(measured, event.record), outs
        if event.kind == "strategy":
            return self._strategy(state, event.record), []
        return state, []

    def _answer(self, state: MetaLearnerState, record: dict[str, Any]) -> tuple[MetaLearnerState, list[Out]]:
        entry = answered(record)
        if any(a.tenant == entry.tenant and a.query_id == entry.query_id for a in state.window):
            return state, []  # read again (at-least-once): already counted
        window = (state.window + (entry,))[-self.settings.metalearn_window:]
        state = replace(state, answers=state.answers + 1, window=window)
        if state.answers % self.settings.metalearn_every:
            return state, []
        s = self.settings
        lam = s.cost_lambda if state.target is None else state.target.cost_lambda
        event = metalearn.tune(rows(window), state.theta_high, state.theta_low, lam=lam,
                               delta=s.metalearn_delta, ts_ms=int(record["ts_ms"]), cost_scale=self.cost_scale)
        if (event["theta_high"], event["theta_low"]) == (state.theta_high, state.theta_low):
            return state, []
        echoes = (state.echoes + (_echo_key(event),))[-ECHOES_KEPT:]
        state = replace(state, theta_high=event["theta_high"], theta_low=event["theta_low"], echoes=echoes)
        return state, [Out("strategy", event, key="global", stage=STAGE)]

    @staticmethod
    def _feedback(state: MetaLearnerState, record: dict[str, Any]) -> MetaLearnerState:
        tenant, query_id, model = str(record["tenant"]), str(record["query_id"]), str(record["model"])
        for i in range(len(state.window) - 1, -1, -1):
            a = state.window[i]
            if a.tenant == tenant and a.query_id == query_id:
                if a.model != model:
                    return state  # a verdict on a model whose answer was not delivered
                judged = replace(a, verdict=float(record["quality"]))
                return replace(state, window=state.window[:i] + (judged,) + state.window[i + 1:])
        return state

    @staticmethod
    def _strategy(state: MetaLearnerState, record: dict[str, Any]) -> MetaLearnerState:
        key = _echo_key(record)
        if key in state.echoes:
            i = state.echoes.index(key)
            return replace(state, echoes=state.echoes[:i] + state.echoes[i + 1:])
        if int(record.get("domain", -1)) != -1:
            return state  # per-domain thresholds are not the global pair this fold tunes
        high, low = _thresholds(record["theta_high"], record["theta_low"])
        state = replace(state, theta_high=high, theta_low=low)
        lam, rate, tenant = record.get("cost_lambda"), record.get("audit_rate"), record.get("tenant")
        target = state.target if tenant is None else state.tenant_targets.get(str(tenant))
        if target is None:
            return state
        if lam is not None:
            target = replace(target, cost_lambda=operating_point(lam))
        if rate is not None:  # it only falls (target.TargetState.base_rate)
            target = replace(target, rate=min(target.rate, audit_rate(rate)))
        return _with_target(state, tenant, target)

    def _measure(self, state: MetaLearnerState, record: dict[str, Any]) -> tuple[MetaLearnerState, list[Out]]:
        """A verdict as the quality target's evidence: on the delivered answer (its first verdict), the
        system's quality; on the supervisor of an audited query, the supervisor's. λ may move (an event)."""
        tenant, query_id, model = str(record["tenant"]), str(record["query_id"]), str(record["model"])
        group = tenant if tenant in self.settings.quality_targets else None  # its own target, or everyone's
        t = state.target if group is None else state.tenant_targets.get(tenant)
        if t is None:
            return state, []
        quality, key = float(record["quality"]), qt.audit_key(tenant, query_id)
        audited = state.audited
        if model == self.supervisor and key not in audited and qt.audit_due(key, t.rate):
            audited = (audited + (key,))[-AUDITS_KEPT:]
            t = qt.observe(t, qt.Observation(None, 0.0, quality, True, self.cost_scale or 0.0))
        entry = next((a for a in reversed(state.window) if (a.tenant, a.query_id) == (tenant, query_id)), None)
        if entry is not None and entry.model == model and entry.verdict is None:
            t = qt.observe(t, qt.Observation(quality, 0.0))
        was = state.target if group is None else state.tenant_targets[tenant]
        before = was.cost_lambda
        state = _with_target(replace(state, audited=audited), group, t)
        if (t.cost_lambda, t.rate) == (before, was.rate):
            return state, []
        r, low, high = qt.ratio(t)
        whose = "" if group is None else f"tenant {group}'s "
        event = {"version": STRATEGY_VERSION, "theta_high": state.theta_high, "theta_low": state.theta_low,
                 "domain": -1, "cost_lambda": t.cost_lambda, "audit_rate": t.rate, "tenant": group,
                 "ts_ms": int(record.get("ts_ms") or 0),
                 "reason": f"{whose}quality target {t.target:g}: ratio {r:.3f} [{low:.3f}, {high:.3f}] (z={t.z:g}) over "
                           f"{t.seen} verdicts and {t.audits} audits; λ {before:.4g} -> {t.cost_lambda:.4g}, "
                           f"audit rate {t.rate:g}"}
        echoes = (state.echoes + (_echo_key(event),))[-ECHOES_KEPT:]
        return replace(state, echoes=echoes), [Out("strategy", event, key="global", stage=STAGE)]


def _with_target(state: MetaLearnerState, tenant: str | None, target: qt.TargetState) -> MetaLearnerState:
    """The state with `tenant`'s controller (None: everyone's) replaced by `target`."""
    if tenant is None:
        return replace(state, target=target)
    return replace(state, tenant_targets={**state.tenant_targets, tenant: target})


def _thresholds(high: float, low: float) -> tuple[float, float]:
    if not 0.0 <= float(low) < float(high) <= 1.0:
        raise ValidationError(f"thresholds the meta-learner cannot tune from: θh={high} θl={low} "
                              "(need 0 <= θl < θh <= 1)")
    return float(high), float(low)
