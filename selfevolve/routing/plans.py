"""What a routing plan is worth before it runs: one model, weak-first, or two cheap voters, escalating as the
arbiter does (selfevolve/scoring/arbiter.py: escalate when the delivered answer's confidence < the bar)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

# The arbiter's vote posterior clips each voter's accuracy to this range (scoring.vote_posterior).
CLIP = (0.03, 0.97)


@dataclass(frozen=True)
class Plan:
    """first: called at once; escalation: the stage called when the confidence is under escalate_below.
    value: expected quality minus λ·expected cost/ref (plus exploration optimism); expected_cost: USD with
    each escalation counted at its estimated chance."""

    first: tuple[str, ...]
    escalation: tuple[tuple[str, ...], ...]
    escalate_below: float
    value: float
    expected_cost: float

    def key(self) -> tuple:
        # Best value; on a tie the cheaper plan, the one calling fewer, the one with an escalation (a net
        # that costs nothing unless the answer looks wrong), then by name (deterministic).
        return (-self.value, self.expected_cost, len(self.first), not self.escalation, self.first)


def _clip(p: float) -> float:
    return min(CLIP[1], max(CLIP[0], p))


@dataclass(frozen=True)
class Prices:
    """Per model: q (estimated quality), price (λ·cost/ref, in quality units), usd, bonus (exploration)."""

    q: Mapping[str, float]
    price: Mapping[str, float]
    usd: Mapping[str, float]
    bonus: Callable[[str], float]


def alone(m: str, p: Prices) -> Plan:
    return Plan((m,), (), 0.0, p.q[m] - p.price[m] + p.bonus(m), p.usd[m])


def weak_first(c: str, top: str, bar: float, p: Prices) -> Plan:
    """c, then top if c's answer looks wrong. A lone answer's confidence is c's estimate unless a check (bad
    format, failing code, a failed call) pulls it down, so an estimate over the bar is delivered, one under
    it escalated. The value is the better of the two (the optimism counted where c's answer would stand):
    an always-escalating plan is never worth more than top alone."""
    if bar <= 0.0:
        return alone(c, p)  # top is not worth its price even against a surely wrong answer
    accept = p.q[c] - p.price[c] + p.bonus(c)
    escalate = p.q[top] - p.price[c] - p.price[top]
    if accept >= escalate:
        return Plan((c,), ((top,),), bar, accept, p.usd[c])
    return Plan((c,), ((top,),), bar, escalate, p.usd[c] + p.usd[top])


def outcomes(q1: float, q2: float, options: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((P(agree, right), P(agree)), (P(split, delivered answer right), P(split))) for two voters of
    accuracy q1, q2 on `options` choices, wrong uniformly over the others, as the arbiter's vote posterior
    assumes: right/total of each is the confidence the arbiter will have in that outcome."""
    p1, p2, w = _clip(q1), _clip(q2), max(1, options - 1)
    agree_right, agree_wrong = p1 * p2, (1 - p1) * (1 - p2) / w
    strong, weak = max(p1, p2), min(p1, p2)
    # A disagreement is won by the stronger voter's answer (the higher posterior).
    return (agree_right, agree_right + agree_wrong), (strong * (1 - weak), 1.0 - agree_right - agree_wrong)


def voters(c1: str, c2: str, top: str, bar: float, options: int, p: Prices) -> Plan:
    """Two cheap models answer a question of `options` choices; agreement lifts the arbiter's confidence
    above either's estimate. Each outcome (agree, split) is delivered when its confidence clears the bar
    and escalated to top otherwise, as the arbiter will."""
    quality, escalated = 0.0, 0.0
    for right, mass in outcomes(p.q[c1], p.q[c2], options):
        if mass <= 0.0:
            continue
        if bar <= 0.0 or right / mass >= bar:
            quality += right
        else:
            quality += mass * p.q[top]
            escalated += mass
    value = (quality - p.price[c1] - p.price[c2] - escalated * p.price[top]
             + (p.bonus(c1) + p.bonus(c2)) / 2)
    esc = ((top,),) if bar > 0.0 else ()
    return Plan((c1, c2), esc, bar if esc else 0.0, value, p.usd[c1] + p.usd[c2] + escalated * p.usd[top])


def best_plan(names: list[str], top: str, cheap: list[str], bar: float, options: int, p: Prices) -> Plan:
    """The best of: each model alone, each cheap model weak-first (escalating to top under the bar), and on
    a choice question each pair of cheap models voting; cheap holds the candidates, best first."""
    plans = [alone(m, p) for m in names] + [weak_first(c, top, bar, p) for c in cheap]
    if options >= 2:
        plans += [voters(a, b, top, bar, options, p) for i, a in enumerate(cheap) for b in cheap[i + 1:]]
    return min(plans, key=Plan.key)
