"""Spawning: gap events become spawn commands; the replay spawner activates reserve models."""

from __future__ import annotations

from collections.abc import Mapping

from selfevolve.evolution import hierarchy as hier
from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution.stats import key

MODES = ("replay", "live")


def initialize() -> dict:
    """Empty state: no gap being served, nothing spawned."""
    return {"pending": [], "spawned": 0, "by_domain": {}}


def best_teacher(h: Mapping, domain: int, stats: Mapping[str, Mapping] | None = None) -> str | None:
    """The domain's teacher with the best mean quality there (name breaks ties); else its supervisor."""
    stats = stats or {}
    for wanted in ("teacher", "supervisor"):
        cands = [m for m, r in hier.members(h, domain).items() if r == wanted]
        if cands:
            return min(cands, key=lambda m: (-stats.get(key(m, domain), {}).get("mean_quality", 0.0), m))
    return None


def candidates(roster: Mapping, domain: int) -> list[str]:
    """Reserve models, in the roster's order, not yet serving the domain."""
    serving = hier.members(roster["hierarchy"], domain)
    return [m for m in roster.get("reserve", []) if m not in serving]


def step(state: Mapping, gap_event: Mapping, roster: Mapping, settings: Settings,
         mode: str = "replay") -> tuple[dict, list[dict]]:
    """One Gap record in; a Spawn record out when the domain has fewer than K models.

    `roster` holds the current "hierarchy", the "reserve" pool (replay) and per-(model, domain)
    "stats" results. One spawn per opened gap: the domain waits until its gap closes.
    """
    if mode not in MODES:
        raise ValidationError(f"spawn mode must be one of {MODES}, not {mode!r}")
    domain = int(gap_event["domain"])
    pending = list(state["pending"])
    if gap_event["kind"] == "close":
        return {**state, "pending": [d for d in pending if d != domain]}, []
    if gap_event["kind"] != "open":
        raise ValidationError(f"unknown gap kind {gap_event['kind']!r}")
    if domain in pending:
        return dict(state), []
    if len(hier.members(roster["hierarchy"], domain)) >= settings.max_models_per_domain:
        return dict(state), []
    if mode == "replay" and not candidates(roster, domain):
        return dict(state), []
    cmd = {"version": 1, "domain": domain,
           "teacher": best_teacher(roster["hierarchy"], domain, roster.get("stats")),
           "mode": mode, "priority": float(gap_event["priority"]), "ts_ms": int(gap_event["ts_ms"])}
    by = dict(state["by_domain"])
    by[str(domain)] = by.get(str(domain), 0) + 1
    return {"pending": sorted(pending + [domain]), "spawned": state["spawned"] + 1, "by_domain": by}, [cmd]


def execute(spawn: Mapping, roster: Mapping) -> list[dict]:
    """The replay spawner: activate the first free reserve model as the domain's student.

    Live spawns go to the distillation trainer instead, so they yield no model event here.
    """
    if spawn["mode"] == "live":
        return []
    domain = int(spawn["domain"])
    free = candidates(roster, domain)
    if not free:
        return []
    reason = f"gap priority={spawn['priority']:.3f} teacher={spawn.get('teacher')}"
    return [hier.event("activate", free[0], domain, None, "student", reason, spawn["ts_ms"])]
