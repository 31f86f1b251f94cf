"""Batching aggregator for the history sink: flush at max_rows items or max_seconds after the first.

Restart contract (the sink in streams/ relies on it):

1. The sink feeds every event to ``agg`` and does *not* commit its Kafka offset yet.
2. When ``ready`` says so (or on shutdown), it writes ``result(state)`` to the store in one insert.
3. Only after that insert succeeds does it commit the offsets of the flushed events and start
   again from ``initialize()``. If the insert fails, nothing is committed.

So a crash anywhere loses nothing: Kafka re-delivers every event after the last commit, including
events that were written but whose commit did not happen. Those duplicates land on the same
ReplacingMergeTree ORDER BY key (infra/clickhouse/ddl.sql) and collapse; analytic SQL reads with
FINAL. Delivery is at-least-once; the table key makes the stored history exactly-once.

Pure: no clock, no I/O. The caller passes ``now_s`` (any monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Batch:
    """Pending items, newest first as a cons list ``(item, rest)`` so ``agg`` is O(1) and pure."""

    head: tuple[Any, Any] | None = None
    size: int = 0
    first_s: float | None = None  # arrival of the oldest pending item; the age deadline counts from it


def initialize() -> Batch:
    """An empty batch."""
    return Batch()


def agg(state: Batch, item: Any, now_s: float) -> Batch:
    """Add one item that arrived at now_s."""
    first_s = now_s if state.first_s is None else state.first_s
    return Batch(head=(item, state.head), size=state.size + 1, first_s=first_s)


def ready(state: Batch, now_s: float, max_rows: int, max_seconds: float) -> bool:
    """Whether to flush now: enough rows, or the oldest item has waited max_seconds.

    An empty batch is never ready, so a timer-driven sink does not issue empty inserts.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if state.size == 0:
        return False
    if state.size >= max_rows:
        return True
    assert state.first_s is not None
    return now_s - state.first_s >= max_seconds


def deadline(state: Batch, max_seconds: float) -> float | None:
    """When the batch becomes ready by age (in now_s units), or None if empty: the sink's next wake-up."""
    return None if state.first_s is None else state.first_s + max_seconds


def result(state: Batch) -> list[Any]:
    """The pending items in arrival order."""
    out: list[Any] = []
    node = state.head
    while node is not None:
        out.append(node[0])
        node = node[1]
    out.reverse()
    return out
