"""The thirteen event kinds, listed once, and the two shapes every fold speaks: Event in, Out out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfevolve.wire.topics import STAGES

# kind -> the topic stage that carries it. Derived from the one list in selfevolve/wire/topics.py.
KINDS: dict[str, str] = {kind: stage for stage, kind in STAGES.items()}


@dataclass(frozen=True)
class Event:
    """One input of a fold: a decoded record of `kind`, where it was read (topic, partition, offset; None in
    the in-memory driver for events it made itself) and what its host measured or adds (`payload`)."""

    kind: str
    record: dict[str, Any]
    topic: str = ""
    at: tuple[int, int] | None = None  # (partition, offset) of the source record, for exactly-once folds
    payload: Any = None


@dataclass(frozen=True)
class Out:
    """One output of a fold: a record of `kind` for the topic of `stage` (a stage name of topics.STAGES, or
    `inference-requests.<backend>` / `answers.<tenant>`), keyed by `key`."""

    kind: str
    record: dict[str, Any]
    key: str | None
    stage: str = ""
    payload: Any = field(default=None, compare=False)
