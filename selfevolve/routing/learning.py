"""Feedback into the history under the bandit rule: only models that were called, only after delivery."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from selfevolve.routing.history import History, Record
from selfevolve.wire.tenancy import DEFAULT_TENANT


@dataclass(frozen=True)
class Feedback:
    query_id: str
    model: str
    quality: float  # 0 = wrong, 1 = right
    tenant: str = DEFAULT_TENANT  # the query's owner: (tenant, query_id) names the query


def feedback_of(record: Mapping) -> Feedback:
    """The verdict a feedback record (schemas/feedback.avsc) gives."""
    return Feedback(record["query_id"], record["model"], float(record["quality"]),
                    record.get("tenant") or DEFAULT_TENANT)


def record_delivery(history: History, vector: np.ndarray, verdict, tenant: str = DEFAULT_TENANT,
                    task: str = "", ts_ms: int = 0, source: str = "") -> Record:
    """Store a delivered verdict: what was paid per model and who won; quality waits for feedback.
    A query already in the history (a delivery redone after a crash) keeps its first record."""
    # Every called model is listed, failures at their real cost (often 0): they too were paid to try.
    costs = {m: float(verdict.model_costs.get(m, 0.0)) for m in verdict.models_called}
    return record_delivered(history, vector, verdict.query_id, tenant, verdict.strategy, costs, verdict.winner,
                            task=task, ts_ms=ts_ms, source=source)


def record_delivered(history: History, vector: np.ndarray, query_id: str, tenant: str, strategy: str,
                     costs: Mapping[str, float], winner: str | None, *, task: str = "", ts_ms: int = 0,
                     source: str = "") -> Record:
    """record_delivery from the fields of a history record (selfevolve/wire/records.py history_delivery)."""
    known = history.get(query_id, tenant)
    if known is not None:
        return known
    costs = {m: float(c) for m, c in costs.items()}
    rec = Record(query_id=query_id, tenant=tenant, strategy=strategy, costs=costs,
                 quality={m: None for m in costs}, winner=winner, delivered=True, task=task,
                 ts_ms=ts_ms, source=source)
    history.add(vector, rec)
    return rec


def apply_feedback(history: History, fb: Feedback) -> bool:
    """Learn fb if the model was called for a delivered query; otherwise learn nothing and say so."""
    rec = history.get(fb.query_id, fb.tenant)
    if rec is None or not rec.delivered or fb.model not in rec.costs:
        return False
    if not 0.0 <= fb.quality <= 1.0:
        return False
    history.set_quality(fb.query_id, fb.model, fb.quality, fb.tenant)
    return True
