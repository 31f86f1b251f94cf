"""One query's life after routing as a pure step(state, event): calls, escalation, fallback, verdict."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from selfevolve.routing.policy import HYBRID, Decision
from selfevolve.scoring import DEFAULT_WEIGHTS, ResponseScore, score_responses, winner


@dataclass(frozen=True)
class Response:
    """A model's answer (or failure) to one call. It carries no verdict: gold never reaches the arbiter."""

    query_id: str
    model: str
    answer: str
    ok: bool
    cost: float
    stage: int = 0
    error: str = ""


@dataclass(frozen=True)
class Call:
    """Output: call this model for this query."""

    query_id: str
    model: str
    stage: int
    fallback_from: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Output: the delivered answer, with every response's scores."""

    query_id: str
    winner: str | None
    answer: str
    confidence: float
    scores: dict[str, ResponseScore]
    models_called: tuple[str, ...]
    fallbacks: tuple[str, ...]
    cost: float
    strategy: str
    stages: int
    model_costs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class State:
    decision: Decision | None = None
    weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS
    stage: int = 0
    pending: frozenset[str] = frozenset()
    responses: tuple[Response, ...] = ()
    called: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    done: bool = False
    scores: dict[str, ResponseScore] = field(default_factory=dict)


def start(decision: Decision, weights=DEFAULT_WEIGHTS) -> tuple[State, list]:
    """Shorthand for step(State(weights=weights), decision)."""
    return step(State(weights=weights), decision)


def step(state: State, event) -> tuple[State, list]:
    """Feed the Decision first, then each Response; outputs are Calls and, last, one Verdict."""
    if state.done:
        return state, []
    if isinstance(event, Decision):
        calls = [Call(event.query_id, m, 0) for m in event.models]
        return replace(state, decision=event, pending=frozenset(event.models), called=tuple(event.models)), calls
    if not isinstance(event, Response) or state.decision is None or event.model not in state.pending:
        return state, []  # duplicate, late or foreign responses change nothing
    d = state.decision
    state = replace(state, pending=state.pending - {event.model}, responses=state.responses + (event,))
    out: list = []
    if not event.ok:
        nxt = d.fallbacks.get(event.model)
        if nxt is not None and nxt not in state.called and _affordable(state, [nxt]):
            out.append(Call(d.query_id, nxt, state.stage, fallback_from=event.model))
            state = replace(state, pending=state.pending | {nxt}, called=state.called + (nxt,),
                            fallbacks=state.fallbacks + (nxt,))
    if state.pending:
        return state, out
    good = {r.model: r.answer for r in state.responses if r.ok}
    scores = score_responses(d.text, good, d.estimates, state.weights)
    best = winner(scores, list(state.called))
    conf = scores[best].confidence if best else 0.0
    if d.strategy == HYBRID and state.stage < len(d.escalation) and conf < d.escalate_below:
        stage_models = [m for m in d.escalation[state.stage] if m not in state.called]
        if stage_models and _affordable(state, stage_models):
            st = state.stage + 1
            calls = [Call(d.query_id, m, st) for m in stage_models]
            return replace(state, stage=st, pending=frozenset(stage_models),
                           called=state.called + tuple(stage_models), scores=scores), out + calls
    verdict = Verdict(d.query_id, best, good.get(best, "") if best else "", conf, scores, state.called,
                      state.fallbacks, sum(r.cost for r in state.responses), d.strategy, state.stage + 1,
                      {r.model: r.cost for r in state.responses})
    return replace(state, done=True, scores=scores), out + [verdict]


def _affordable(state: State, models: list[str]) -> bool:
    d = state.decision
    if d.budget is None:
        return True
    spent = sum(r.cost for r in state.responses)
    return spent + sum(d.costs.get(m, 0.0) for m in models) <= d.budget
