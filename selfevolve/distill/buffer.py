"""Distillation buffer (Algorithm 4.1): per-domain teacher responses whose confidence exceeds θ.

An initialize / agg / result aggregator over plain dicts, pure: the stream adapter decides when to train.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

State = dict[str, Any]  # {"theta": float, "teachers": frozenset, "domains": {domain: [item, ...]}, "seen": int}

_KEEP = ("query_id", "prompt", "answer", "confidence", "model", "metrics")


def initialize(theta: float, teachers: frozenset[str] | set[str] | None = None) -> State:
    """Empty buffer keeping responses with confidence > theta; teachers=None accepts any model."""
    return {"theta": float(theta), "teachers": frozenset(teachers) if teachers else None, "domains": {}, "seen": 0}


def agg(state: State, event: Mapping[str, Any]) -> State:
    """Fold one teacher response (domain, prompt, answer, confidence, model[, metrics, ok]) into the buffer."""
    seen = state["seen"] + 1
    keep = (
        event.get("ok", True)
        and float(event.get("confidence", 0.0)) > state["theta"]
        and (state["teachers"] is None or event.get("model") in state["teachers"])
        and bool(event.get("prompt")) and bool(event.get("answer"))
    )
    if not keep:
        return {**state, "seen": seen}
    domain = str(event.get("domain") or "general")
    item = {k: event.get(k) for k in _KEEP}
    items = state["domains"].get(domain, [])
    # A query answered twice (retries, re-scores) keeps only its latest confident answer.
    items = [i for i in items if i["query_id"] is None or i["query_id"] != item["query_id"]] + [item]
    return {**state, "seen": seen, "domains": {**state["domains"], domain: items}}


def result(state: State) -> dict[str, int]:
    """Buffered responses per domain."""
    return {d: len(items) for d, items in state["domains"].items()}


def ready(state: State, domain: str, B: int) -> bool:
    """True once domain holds at least B responses: time to train its student."""
    return len(state["domains"].get(domain, [])) >= B


def drain(state: State, domain: str) -> tuple[State, list[dict[str, Any]]]:
    """Remove and return the domain's buffered responses, oldest first."""
    items = state["domains"].get(domain, [])
    rest = {d: v for d, v in state["domains"].items() if d != domain}
    return {**state, "domains": rest}, list(items)
