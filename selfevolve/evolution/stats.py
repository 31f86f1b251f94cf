"""Per-(model, domain) score statistics as JSON aggregators, all-time and windowed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from selfevolve.errors import ValidationError

_FIELDS = ("n", "wins", "confidence", "quality", "cost")


def _sums() -> dict:
    return {"n": 0, "wins": 0, "confidence": 0.0, "quality": 0.0, "cost": 0.0}


def _add(s: dict, event: Mapping) -> None:
    s["n"] += 1
    s["wins"] += 1 if event.get("winner") else 0
    s["confidence"] += float(event.get("confidence", 0.0))
    # Quality defaults to the scorer's composite: score events carry no separate quality.
    s["quality"] += float(event.get("quality", event.get("composite", 0.0)))
    s["cost"] += float(event.get("cost_usd", 0.0))


def _finish(s: Mapping) -> dict:
    n = s["n"]
    if n == 0:
        return {"n": 0, "wins": 0, "win_rate": 0.0, "mean_confidence": 0.0,
                "mean_quality": 0.0, "mean_cost": 0.0}
    return {"n": n, "wins": s["wins"], "win_rate": s["wins"] / n,
            "mean_confidence": s["confidence"] / n, "mean_quality": s["quality"] / n,
            "mean_cost": s["cost"] / n}


# All-time aggregator: sums only, so the state stays tiny and merges exactly.

def initialize() -> dict:
    """Empty all-time state."""
    return _sums()


def agg(state: Mapping, event: Mapping) -> dict:
    """State after one score event (keys winner, confidence, quality|composite, cost_usd)."""
    out = dict(state)
    _add(out, event)
    return out


def result(state: Mapping) -> dict:
    """n, wins, win_rate, mean_confidence, mean_quality, mean_cost."""
    return _finish(state)


# Rolling window: buckets of `hop` events (or milliseconds); the window is the last size/hop buckets.
# hop == size is a tumbling window, hop < size a hopping one.

def window_initialize(size: int, hop: int | None = None, by: str = "count") -> dict:
    """Empty windowed state; size and hop are event counts (by='count') or ms (by='time')."""
    hop = size if hop is None else hop
    if by not in ("count", "time"):
        raise ValidationError(f"window must be by count or time, not {by!r}")
    if size <= 0 or hop <= 0 or size % hop:
        raise ValidationError(f"window size {size} must be a positive multiple of hop {hop}")
    return {"size": int(size), "hop": int(hop), "by": by, "seen": 0, "last": None, "buckets": {}}


def _bucket(state: Mapping, event: Mapping) -> int:
    if state["by"] == "count":
        return state["seen"] // state["hop"]
    if "ts_ms" not in event:
        raise ValidationError("a time window needs ts_ms on every event")
    return int(event["ts_ms"]) // state["hop"]


def window_agg(state: Mapping, event: Mapping) -> dict:
    """State after one event; buckets that fell out of the window are dropped."""
    b = _bucket(state, event)
    last = b if state["last"] is None else max(state["last"], b)
    span = state["size"] // state["hop"]
    buckets = {k: dict(v) for k, v in state["buckets"].items() if int(k) > last - span}
    if b > last - span:  # a late event older than the window is ignored
        cur = buckets.setdefault(str(b), _sums())
        _add(cur, event)
    return {**state, "seen": state["seen"] + 1, "last": last, "buckets": buckets}


def window_result(state: Mapping, now: int | None = None) -> dict:
    """Statistics over the window ending at the newest bucket (or at bucket of `now` for time)."""
    last = state["last"]
    if last is None:
        return _finish(_sums())
    if now is not None and state["by"] == "time":
        last = max(last, int(now) // state["hop"])
    span = state["size"] // state["hop"]
    total = _sums()
    for k, v in state["buckets"].items():
        if int(k) > last - span:
            for f in _FIELDS:
                total[f] += v[f]
    return _finish(total)


# Keyed tables, as a Faust table holds them: one state per "model|domain" key.

def key(model: str, domain: int) -> str:
    """Table key for a (model, domain) pair."""
    return f"{model}|{int(domain)}"


def parse_key(k: str) -> tuple[str, int]:
    """Inverse of key()."""
    model, _, domain = k.rpartition("|")
    return model, int(domain)


def table_agg(table: Mapping, event: Mapping, window: Mapping | None = None) -> dict:
    """Fold one event into a keyed table; with `window` (a window_initialize state) it is windowed."""
    k = key(event["model"], int(event.get("domain", -1)))
    out = dict(table)
    if window is None:
        out[k] = agg(table.get(k, initialize()), event)
    else:
        out[k] = window_agg(table.get(k, window), event)
    return out


def table_result(table: Mapping) -> dict[str, dict]:
    """Results of every key of a table, all-time or windowed alike."""
    return {k: (window_result(v) if "buckets" in v else result(v)) for k, v in sorted(table.items())}


def fold(events: Iterable[Mapping], window: Mapping | None = None) -> dict:
    """A table built from scratch from events (what a changelog recovery must reproduce)."""
    table: dict = {}
    for e in events:
        table = table_agg(table, e, window)
    return table
