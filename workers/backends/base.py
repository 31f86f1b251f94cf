"""The backend interface: one async `complete` call per (model, prompt), returning a Completion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from selfevolve.flow.responders import estimate_tokens  # noqa: F401 - one rule for backends and the driver
from selfevolve.models.catalogue import ModelSpec


@dataclass(frozen=True)
class Completion:
    """One model's answer with what it cost. confidence is None when the backend cannot tell."""

    answer: str
    confidence: float | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@runtime_checkable
class Backend(Protocol):
    """Anything that can answer a prompt as a catalogue model; raises selfevolve.errors.BackendError."""

    async def complete(
        self, spec: ModelSpec, prompt: str, *, query_id: str = "", metadata: dict[str, str] | None = None
    ) -> Completion: ...
