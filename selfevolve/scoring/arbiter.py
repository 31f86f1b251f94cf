"""One query's life after routing as a pure step(state, event): calls, escalation, fallback, verdict."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from selfevolve.errors import ValidationError
from selfevolve.routing.policy import HYBRID, Decision
from selfevolve.scoring.checkers import DEFAULT_LIMITS
from selfevolve.scoring.sandbox import Limits
from selfevolve.scoring.scoring import DEFAULT_WEIGHTS, ResponseScore, score_responses, winner
from selfevolve.wire.tenancy import query_key


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
    # The id of the request it answers; a record off the wire always has one and it must match the call's.
    request_id: str | None = None


@dataclass(frozen=True)
class Call:
    """Output: call this model for this query."""

    query_id: str
    model: str
    stage: int
    fallback_from: str | None = None


def request_id(tenant: str, call: Call) -> str:
    """A call's request id: deterministic, so a call re-sent after a restart is recognisably the same, and
    naming the tenant, as two tenants' queries may share an id (wire.request_record sends this one)."""
    return f"{query_key(tenant, call.query_id)}:{call.stage}:{call.model}"


@dataclass(frozen=True)
class Rejected:
    """Output: a response that answers no call this state made and still awaits. It changed nothing and
    must not be scored (its code is never run); the scorer can dead-letter it with `reason`."""

    query_id: str
    model: str
    request_id: str | None
    reason: str


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
    code_limits: Limits = DEFAULT_LIMITS  # the sandbox an answer's own code is checked in


def start(decision: Decision, weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS,
          code_limits: Limits = DEFAULT_LIMITS) -> tuple[State, list]:
    """Shorthand for step(State(weights=weights, code_limits=code_limits), decision). The defaults are
    Settings' defaults; a scorer passes settings.score_weights and Limits.from_settings(settings)."""
    return step(State(weights=weights, code_limits=code_limits), decision)


def awaited(state: State) -> dict[str, str]:
    """Request id -> model of every call made and not yet answered (all belong to the current stage)."""
    d = state.decision
    if d is None or state.done:
        return {}
    return {request_id(d.tenant, Call(d.query_id, m, state.stage)): m for m in state.pending}


def rejection(state: State, r: Response) -> str | None:
    """Why `r` answers no awaited call of this state (None: it does). Checked before anything is scored."""
    if state.decision is None:
        return "no decision: not a response to a call this scorer made"
    if state.done:
        return "query already answered"
    if r.query_id != state.decision.query_id:
        return f"response for query {r.query_id!r} fed to query {state.decision.query_id!r}"
    expected = request_id(state.decision.tenant, Call(r.query_id, r.model, r.stage))
    if awaited(state).get(expected) != r.model:
        return f"no call awaits model {r.model!r} at stage {r.stage} (duplicate, late or never made)"
    if r.request_id is not None and r.request_id != expected:
        return f"request id {r.request_id!r} is not the call's {expected!r}"
    return None


def admit(state: State, event) -> None:
    """Raise ValidationError, saying why, for a response `step` would reject: a caller that must not keep
    or run a foreign record (the scorer dead-letters it) checks with this before it logs the event."""
    why = rejection(state, event) if isinstance(event, Response) else None
    if why is not None:
        raise ValidationError(f"response {event.request_id!r} from {event.model!r} rejected: {why}")


def step(state: State, event) -> tuple[State, list]:
    """Feed the Decision first, then each Response; outputs are Calls and, last, one Verdict. A response
    that matches no awaited call (query, model, stage and request id) changes nothing: its output is one
    Rejected."""
    if isinstance(event, Response):
        why = rejection(state, event)
        if why is not None:
            return state, [Rejected(event.query_id, event.model, event.request_id, why)]
    elif state.done or not isinstance(event, Decision) or state.decision is not None:
        return state, []  # a second decision, or anything else, changes nothing
    if isinstance(event, Decision):
        calls = [Call(event.query_id, m, 0) for m in event.models]
        return replace(state, decision=event, pending=frozenset(event.models), called=tuple(event.models)), calls
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
    scores = score_responses(d.text, good, d.estimates, state.weights, state.code_limits)
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
