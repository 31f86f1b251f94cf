"""Gap detection: a windowed per-domain step that opens and closes capability gaps."""

from __future__ import annotations

from collections.abc import Mapping

from selfevolve.config import Settings
from selfevolve.errors import ValidationError


def initialize(window: int = 100, hop: int | None = None, min_n: int | None = None) -> dict:
    """Empty state: the last `window` outcomes per domain, checked every `hop` events of it."""
    hop = max(1, window // 4) if hop is None else hop
    min_n = max(1, window // 2) if min_n is None else min_n
    if window < 1 or hop < 1 or not 1 <= min_n <= window:
        raise ValidationError(f"bad gap window: window={window} hop={hop} min_n={min_n}")
    return {"window": window, "hop": hop, "min_n": min_n, "domains": {}, "opened": 0, "closed": 0}


def priority(mean_confidence: float, failure_rate: float, traffic: int, window: int) -> float:
    """In [0, 1]: rises as confidence falls, as failures rise and as the domain's traffic grows."""
    severity = 0.5 * (1.0 - mean_confidence) + 0.5 * failure_rate
    return max(0.0, min(1.0, severity)) * traffic / (traffic + window)


def is_gap(mean_confidence: float, failure_rate: float, settings: Settings) -> bool:
    """The paper's rule: mean confidence < θgap or failure rate > 0.3."""
    return mean_confidence < settings.gap_confidence or failure_rate > settings.gap_failure_rate


def step(state: Mapping, event: Mapping, settings: Settings) -> tuple[dict, list[dict]]:
    """Fold one scored answer (domain, confidence, failed, ts_ms); emit Gap records on a change."""
    d = str(int(event["domain"]))
    cur = state["domains"].get(d, {"conf": [], "fail": [], "traffic": 0, "since": 0, "open": False})
    w = state["window"]
    cur = {"conf": (cur["conf"] + [float(event["confidence"])])[-w:],
           "fail": (cur["fail"] + [1 if event.get("failed") else 0])[-w:],
           "traffic": cur["traffic"] + 1, "since": cur["since"] + 1, "open": cur["open"]}
    out = {**state, "domains": {**state["domains"], d: cur}}
    if cur["since"] < state["hop"] or len(cur["conf"]) < state["min_n"]:
        return out, []
    cur["since"] = 0
    conf = sum(cur["conf"]) / len(cur["conf"])
    fail = sum(cur["fail"]) / len(cur["fail"])
    gap = is_gap(conf, fail, settings)
    if gap == cur["open"]:
        return out, []
    cur["open"] = gap
    out["opened" if gap else "closed"] = state["opened" if gap else "closed"] + 1
    rec = {"version": 1, "domain": int(d), "kind": "open" if gap else "close",
           "mean_confidence": conf, "failure_rate": fail, "traffic": cur["traffic"],
           "priority": priority(conf, fail, cur["traffic"], w), "ts_ms": int(event.get("ts_ms", 0))}
    return out, [rec]


def open_gaps(state: Mapping) -> list[int]:
    """Domains with a gap open now."""
    return sorted(int(d) for d, v in state["domains"].items() if v["open"])


def counts(state: Mapping) -> dict[str, int]:
    """Gaps opened and closed so far."""
    return {"opened": state["opened"], "closed": state["closed"], "open_now": len(open_gaps(state))}
