"""Exactly-once folds over at-least-once delivery: a state carries the source position it last applied.

A stream worker's table is restored from its changelog, but its input offsets are committed on a timer, so
a worker killed between the two sees events again that its restored state already holds. Each state is
stored with the (partition, offset) of the last event folded into it, in one value so one changelog write
carries both; an event at or before that position is a redelivery and is skipped. Offsets only grow within
a partition, and a keyed source puts every event of one key in one partition, so one position per key is
enough. An event from another partition than the stored one (a repartitioned source) is folded in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Position = tuple[int, int]  # (partition, offset) of a source event


def applied(entry: Mapping | None, at: Position) -> bool:
    """True when `entry` already holds the event at `at`."""
    if entry is None or entry.get("at") is None:
        return False
    partition, offset = entry["at"]
    return partition == at[0] and at[1] <= offset


def value(entry: Mapping | None, default: Any) -> Any:
    """The folded state inside an entry, or `default` for a key never seen."""
    return default if entry is None else entry["value"]


def advance(state: Any, at: Position) -> dict:
    """The entry to store once the event at `at` is folded into `state`."""
    return {"at": [int(at[0]), int(at[1])], "value": state}
