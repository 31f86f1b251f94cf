"""The meta-learner as a fold: every `metalearn_every` answers, nudge θh/θl toward the best strategy (Alg. 5.3).

Its clock is the answers it has counted, never the wall: the same answers and verdicts, in the same order,
move the thresholds at the same answers. Each strategy is scored over the last `metalearn_window` answers:
quality is the latest feedback verdict on the answering model where one has arrived, else the scorer's
composite; cost is what the answer cost in all (what metalearn.STRATEGY_SQL computes from the history store
for people to read; nothing here reads the store).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import metalearn
from selfevolve.flow.events import Event, Out
from selfevolve.models.catalogue import Catalogue, Role

STAGE = "strategy"
ECHOES_KEPT = 64  # own strategy events awaiting their copy from the topic


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
    first) and this fold's own strategy events not yet read back from the topic (canonical JSON)."""

    theta_high: float
    theta_low: float
    answers: int = 0
    window: tuple[Answered, ...] = ()
    echoes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"theta_high": self.theta_high, "theta_low": self.theta_low, "answers": self.answers,
                "window": [asdict(a) for a in self.window], "echoes": list(self.echoes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetaLearnerState:
        try:
            window = tuple(Answered(**a) for a in data["window"])
            return cls(float(data["theta_high"]), float(data["theta_low"]), int(data["answers"]), window,
                       tuple(str(e) for e in data["echoes"]))
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


def _echo_key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


class MetaLearnerFold:
    """answer -> (every `metalearn_every`) strategy; feedback -> the verdict on an answer; strategy -> θ.

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

    def initialize(self) -> MetaLearnerState:
        s = self.settings
        return MetaLearnerState(*_thresholds(s.theta_high, s.theta_low))

    def step(self, state: MetaLearnerState, event: Event) -> tuple[MetaLearnerState, list[Out]]:
        if event.kind == "answer":
            return self._answer(state, event.record)
        if event.kind == "feedback":
            return self._feedback(state, event.record), []
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
        event = metalearn.tune(rows(window), state.theta_high, state.theta_low, lam=s.cost_lambda,
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
        return replace(state, theta_high=high, theta_low=low)


def _thresholds(high: float, low: float) -> tuple[float, float]:
    if not 0.0 <= float(low) < float(high) <= 1.0:
        raise ValidationError(f"thresholds the meta-learner cannot tune from: θh={high} θl={low} "
                              "(need 0 <= θl < θh <= 1)")
    return float(high), float(low)
