"""Promotion and demotion rules per domain, plain or gated by a confidence bound on the win rate."""

from __future__ import annotations

import math
from collections.abc import Mapping

from selfevolve.evolution import hierarchy as hier
from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution.stats import parse_key


def wilson_lower(wins: int, n: int, z: float = 1.645) -> float:
    """Lower end of the Wilson score interval (z=1.645: one-sided 95%)."""
    if n <= 0:
        return 0.0
    p = wins / n
    d = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / d)


def wilson_upper(wins: int, n: int, z: float = 1.645) -> float:
    """Upper end of the Wilson score interval."""
    if n <= 0:
        return 1.0
    return 1.0 - wilson_lower(n - wins, n, z)


def hoeffding_lower(wins: int, n: int, alpha: float = 0.05) -> float:
    """Win rate minus the Hoeffding deviation at level alpha."""
    if n <= 0:
        return 0.0
    return max(0.0, wins / n - math.sqrt(math.log(1 / alpha) / (2 * n)))


def hoeffding_upper(wins: int, n: int, alpha: float = 0.05) -> float:
    """Win rate plus the Hoeffding deviation at level alpha."""
    if n <= 0:
        return 1.0
    return min(1.0, wins / n + math.sqrt(math.log(1 / alpha) / (2 * n)))


_BOUNDS = {"wilson": (wilson_lower, wilson_upper), "hoeffding": (hoeffding_lower, hoeffding_upper)}


def clears_bar(s: Mapping, settings: Settings, gated: bool = False, method: str = "wilson") -> bool:
    """n >= θn, win rate (or its lower bound) >= θw and mean confidence >= θc."""
    if s["n"] < settings.promote_min_n or s["mean_confidence"] < settings.promote_min_confidence:
        return False
    if gated:
        lower, _ = _bounds(method)
        return lower(int(s["wins"]), int(s["n"])) >= settings.promote_min_winrate
    return s["win_rate"] >= settings.promote_min_winrate


def falls_below(s: Mapping, settings: Settings, gated: bool = False, method: str = "wilson",
                margin: float = 0.05) -> bool:
    """Enough evidence that a model no longer holds the bar of its role.

    The margin (or, gated, the upper bound) is hysteresis: without it a model sitting on the bar
    would be promoted and demoted on alternate cycles.
    """
    if s["n"] < settings.promote_min_n:
        return False
    if s["mean_confidence"] < settings.promote_min_confidence - margin:
        return True
    if gated:
        _, upper = _bounds(method)
        return upper(int(s["wins"]), int(s["n"])) < settings.promote_min_winrate
    return s["win_rate"] < settings.promote_min_winrate - margin


def _bounds(method: str):
    if method not in _BOUNDS:
        raise ValidationError(f"unknown bound {method!r}; use wilson or hoeffding")
    return _BOUNDS[method]


def decide(stats: Mapping[str, Mapping], hierarchy: Mapping, settings: Settings, gated: bool = False,
           *, ts_ms: int = 0, method: str = "wilson", margin: float = 0.05,
           floor_at_catalogue: bool = True) -> list[dict]:
    """ModelEvent records that move each (model, domain) at most one step.

    `stats` maps stats.key(model, domain) to stats.result-like dicts. Students and TAs that clear
    the bar go up (never to supervisor); TAs and teachers that fall below it go down. With
    floor_at_catalogue a model is never demoted below the role the operator gave it globally:
    evolution only takes back what evolution granted.
    """
    events: list[dict] = []
    for k in sorted(stats):
        model, domain = parse_key(k)
        if domain < 0:
            continue
        current = hier.role(hierarchy, model, domain)
        if current is None or current == "supervisor":
            continue
        s = stats[k]
        target = hier.up(current)
        if current in ("student", "ta") and clears_bar(s, settings, gated, method):
            why = _reason(s, gated, method)
            events.append(hier.event("promote", model, domain, current, target, why, ts_ms))
            continue
        if current in ("ta", "teacher") and falls_below(s, settings, gated, method, margin):
            floor = hierarchy["models"].get(model) if floor_at_catalogue else None
            if floor is not None and hier.rank(current) <= hier.rank(floor):
                continue
            events.append(hier.event("demote", model, domain, current, hier.down(current),
                                     _reason(s, gated, method), ts_ms))
    return events


def _reason(s: Mapping, gated: bool, method: str) -> str:
    tag = f"gated-{method} " if gated else ""
    return (f"{tag}n={s['n']} win_rate={s['win_rate']:.3f} "
            f"mean_confidence={s['mean_confidence']:.3f}")
