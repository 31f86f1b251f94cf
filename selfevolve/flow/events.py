"""The twelve event kinds, listed once, and the two shapes every fold speaks: Event in, Out out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfevolve.wire.topics import STAGES

# kind -> the topic stage that carries it. Derived from the one list in selfevolve/wire/topics.py.
KINDS: dict[str, str] = {kind: stage for stage, kind in STAGES.items()}

# Outputs that never travel on a topic: handed from one fold to another in the same process (a delivered
# answer and its vector, from the scorer to the routing history).
INTERNAL = ("delivery",)


@dataclass(frozen=True)
class Event:
    """One input of a fold: a decoded record of `kind`, where it was read (topic, partition, offset; None in
    the in-memory driver for events it made itself) and, for internal kinds, a Python payload."""

    kind: str
    record: dict[str, Any]
    topic: str = ""
    at: tuple[int, int] | None = None  # (partition, offset) of the source record, for exactly-once folds
    payload: Any = None


@dataclass(frozen=True)
class Out:
    """One output of a fold: a record of `kind` for the topic of `stage` (a stage name of topics.STAGES, or
    `inference-requests.<backend>` / `answers.<tenant>`), keyed by `key`. Internal kinds carry `payload`."""

    kind: str
    record: dict[str, Any]
    key: str | None
    stage: str = ""
    payload: Any = field(default=None, compare=False)
