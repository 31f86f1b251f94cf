"""Evolution as a fold: scores -> statistics -> promotions; scores -> gap windows -> gaps -> spawns.

One step per score, in one order: the statistics half folds a contested score into its domain's tables and
asks selfevolve.evolution.promotion which (model, domain) moves; the gap half folds the delivered (winning)
answer into its domain's gap window, and a gap that opens goes to the spawner at once, with the roster's
real statistics (the domain's all-time table) and only the reserve models a spawn may use. Model events
(promotions, replay activations, anyone else's) update the fold's own hierarchy. Everything a decision reads
is in the state or the event: timestamps are the score's ts_ms, windows count scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import gaps, promotion, spawning, stats
from selfevolve.evolution import hierarchy as hier
from selfevolve.flow.events import Event, Out
from selfevolve.models.catalogue import Catalogue

ECHOES_KEPT = 1024  # own model events awaiting their copy from the topic; a copy never read back ages out


@dataclass(frozen=True)
class DomainStats:
    """One domain's win statistics. The aggregators stay selfevolve.evolution.stats' JSON values (sums, and
    count-window buckets of sums), keyed stats.key(model, domain): they are what the table stores and what
    promotion.decide and the spawner's roster read, and a typed copy would only be converted back."""

    alltime: dict[str, dict] = field(default_factory=dict)
    window: dict[str, dict] = field(default_factory=dict)

    def results(self) -> dict[str, dict]:
        """stats.result per (model, domain) key, all-time: what promotion and the spawner's roster read."""
        return stats.table_result(self.alltime)

    def to_json(self) -> dict[str, Any]:
        return {"alltime": self.alltime, "window": self.window}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainStats:
        try:
            return cls(alltime=dict(data["alltime"]), window=dict(data["window"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"not a domain statistics value: {e}") from e


@dataclass(frozen=True)
class GapWindow:
    """One domain's gap detector (selfevolve.evolution.gaps): the last window's confidences and failures of
    delivered answers, answers seen (traffic) and since the last check, whether a gap is open, and counts."""

    confidence: tuple[float, ...] = ()
    failed: tuple[int, ...] = ()
    traffic: int = 0
    since: int = 0
    open: bool = False
    opened: int = 0
    closed: int = 0


@dataclass(frozen=True)
class DomainGaps:
    """One domain's gap window and spawner: `pending` while a spawn serves its open gap, `spawned` in all."""

    window: GapWindow = field(default_factory=GapWindow)
    pending: bool = False
    spawned: int = 0

    def to_json(self) -> dict[str, Any]:
        w = self.window
        return {"confidence": list(w.confidence), "failed": list(w.failed), "traffic": w.traffic,
                "since": w.since, "open": w.open, "opened": w.opened, "closed": w.closed,
                "pending": self.pending, "spawned": self.spawned}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainGaps:
        try:
            w = GapWindow(tuple(float(c) for c in data["confidence"]), tuple(int(f) for f in data["failed"]),
                          int(data["traffic"]), int(data["since"]), bool(data["open"]), int(data["opened"]),
                          int(data["closed"]))
            return cls(w, bool(data["pending"]), int(data["spawned"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"not a domain gap value: {e}") from e


@dataclass(frozen=True)
class EvolutionState:
    """The hierarchy (selfevolve.evolution.hierarchy's JSON value, which the router's fold shares), the
    per-domain parts, and this fold's own model events not yet read back from the topic (canonical JSON)."""

    hierarchy: dict[str, Any]
    stats: dict[int, DomainStats] = field(default_factory=dict)
    gaps: dict[int, DomainGaps] = field(default_factory=dict)
    echoes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"hierarchy": self.hierarchy, "echoes": list(self.echoes),
                "stats": {str(d): s.to_json() for d, s in sorted(self.stats.items())},
                "gaps": {str(d): g.to_json() for d, g in sorted(self.gaps.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvolutionState:
        try:
            return cls(hierarchy=data["hierarchy"], echoes=tuple(str(e) for e in data["echoes"]),
                       stats={int(d): DomainStats.from_json(v) for d, v in data["stats"].items()},
                       gaps={int(d): DomainGaps.from_json(v) for d, v in data["gaps"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValidationError(f"not an evolution state: {e}") from e


def echo_key(record: dict[str, Any]) -> str:
    """How an own model event is recognised when the topic hands it back."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


class EvolutionFold:
    """score -> model_event (promote/demote), gap, spawn, model_event (activate); model_event -> hierarchy.

    Its own model events are applied to the hierarchy as they are made (the next score must not decide the
    same move again) and remembered until their copy comes back from the topic, which then changes nothing:
    an older copy arriving after a newer move would otherwise set a role back. Every other model event is
    applied when read. A step never changes the state it is given. `stats_step` and `gaps_step` are the
    two halves of a score's step, for a host that stores them in two tables with their own positions.
    """

    name = "evolution"
    consumes = ("score", "model_event")

    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        if settings.spawn_mode not in spawning.MODES:
            raise ValidationError(f"spawn_mode must be one of {spawning.MODES}, not {settings.spawn_mode!r}")
        self.settings, self.catalogue = settings, catalogue
        shape = gaps.initialize(settings.window_size)
        self.hop, self.min_n = shape["hop"], shape["min_n"]
        self.empty_window = stats.window_initialize(settings.window_size)
        # Only backends a spawn may use, cheapest first: a spawned student is meant to be cheap.
        self.reserve = [s.name for s in sorted(catalogue.reserve(), key=lambda s: (s.cost_per_call or 0.0, s.name))
                        if s.backend in settings.spawn_backends]

    def initialize(self) -> EvolutionState:
        return EvolutionState(hierarchy=hier.from_catalogue(self.catalogue))

    def step(self, state: EvolutionState, event: Event) -> tuple[EvolutionState, list[Out]]:
        if event.kind == "model_event":
            return self.follow(state, event.record), []
        if event.kind != "score":
            return state, []
        state, outs = self.stats_step(state, event.record)
        state, more = self.gaps_step(state, event.record)
        return state, outs + more

    def follow(self, state: EvolutionState, record: dict[str, Any]) -> EvolutionState:
        """A model event read from the topic: the copy of an own one changes nothing, any other applies."""
        key = echo_key(record)
        if key in state.echoes:
            i = state.echoes.index(key)
            return replace(state, echoes=state.echoes[:i] + state.echoes[i + 1:])
        return replace(state, hierarchy=hier.apply(state.hierarchy, record))

    def stats_step(self, state: EvolutionState, score: dict[str, Any]) -> tuple[EvolutionState, list[Out]]:
        """Fold a contested score into its domain's tables; the promotions and demotions it triggers."""
        if not score["contested"]:
            return state, []  # a model called alone always "wins": only head-to-head answers count
        d = int(score["domain"])
        cur = state.stats.get(d, DomainStats())
        part = DomainStats(alltime=stats.table_agg(cur.alltime, score),
                           window=stats.table_agg(cur.window, score, self.empty_window))
        decided = promotion.decide(part.results(), state.hierarchy, self.settings, gated=self.settings.promote_gated,
                                   ts_ms=int(score["ts_ms"]))
        state = replace(state, stats={**state.stats, d: part})
        return self._own(state, decided)

    def gaps_step(self, state: EvolutionState, score: dict[str, Any]) -> tuple[EvolutionState, list[Out]]:
        """Fold the delivered answer into its domain's gap window; a gap that opens goes to the spawner."""
        if not score["winner"]:
            return state, []  # one outcome per delivered answer: the winner's
        d = int(score["domain"])
        cur = state.gaps.get(d, DomainGaps())
        # "Failed" is the scorer's no-gold correctness of the delivered answer: nothing here reads gold.
        outcome = {"domain": d, "confidence": float(score["confidence"]), "failed": score["correctness"] < 0.5,
                   "ts_ms": int(score["ts_ms"])}
        after, changes = gaps.step(self._gap_state(d, cur.window), outcome, self.settings)
        part = replace(cur, window=self._gap_window(after, d))
        outs: list[Out] = []
        events: list[dict] = []
        for g in changes:
            outs.append(Out("gap", g, key=str(d), stage="gaps"))
            part, spawned, made = self._spawn(state, part, g)
            outs += spawned
            events += made
        state = replace(state, gaps={**state.gaps, d: part})
        state, applied = self._own(state, events)
        return state, outs + applied

    def _spawn(self, state: EvolutionState, part: DomainGaps, gap: dict) -> tuple[DomainGaps, list[Out], list[dict]]:
        """The spawner on one gap record: its spawn commands and, in replay mode, the activations they run."""
        d = int(gap["domain"])
        roster = {"hierarchy": state.hierarchy, "reserve": self.reserve,
                  "stats": state.stats.get(d, DomainStats()).results()}
        before = {"pending": [d] if part.pending else [], "spawned": part.spawned, "by_domain": {}}
        after, commands = spawning.step(before, gap, roster, self.settings, self.settings.spawn_mode)
        part = replace(part, pending=d in after["pending"], spawned=after["spawned"])
        outs = [Out("spawn", c, key=str(d), stage="spawns") for c in commands]
        return part, outs, [e for c in commands for e in spawning.execute(c, roster)]

    def _own(self, state: EvolutionState, events: list[dict]) -> tuple[EvolutionState, list[Out]]:
        """Apply model events this fold made, remember them until read back, and send them."""
        h, echoes = state.hierarchy, state.echoes
        for e in events:
            h = hier.apply(h, e)
            echoes = (echoes + (echo_key(e),))[-ECHOES_KEPT:]
        outs = [Out("model_event", e, key=e["model"], stage="model-events") for e in events]
        return replace(state, hierarchy=h, echoes=echoes), outs

    def _gap_state(self, d: int, w: GapWindow) -> dict:
        """selfevolve.evolution.gaps' state holding this one domain."""
        return {"window": self.settings.window_size, "hop": self.hop, "min_n": self.min_n,
                "domains": {str(d): {"conf": list(w.confidence), "fail": list(w.failed), "traffic": w.traffic,
                                     "since": w.since, "open": w.open}},
                "opened": w.opened, "closed": w.closed}

    @staticmethod
    def _gap_window(g: dict, d: int) -> GapWindow:
        cur = g["domains"][str(d)]
        return GapWindow(tuple(cur["conf"]), tuple(cur["fail"]), cur["traffic"], cur["since"], cur["open"],
                         g["opened"], g["closed"])
