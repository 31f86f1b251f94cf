"""Replay backend: serves the real recorded answer and real cost of a RouterBench model for a prompt."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from workers.backends.base import Completion, estimate_tokens
from selfevolve.models.catalogue import ModelSpec
from selfevolve.data.routerbench import Dataset, load_dir
from selfevolve.errors import BackendError


def prompt_key(prompt: str) -> str:
    """Stable lookup key of a prompt's exact text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Recording:
    responses: dict[str, str]
    costs: dict[str, float]


class ReplayBackend:
    """Answers from recordings. Correctness is kept apart and only reachable through verdict().

    The recorded column is spec.options["replay_model"] when set, else spec.name.
    """

    def __init__(self, dataset: Dataset) -> None:
        self._by_id: dict[str, _Recording] = {}
        self._by_prompt: dict[str, str] = {}  # prompt hash -> sample_id
        # Gold labels live in their own table so complete() has no path to them.
        self._verdicts: dict[str, dict[str, float]] = {}
        for s in dataset.samples:
            self._by_id[s.sample_id] = _Recording(dict(s.responses), dict(s.costs))
            self._verdicts[s.sample_id] = dict(s.correct)
            # The first sample of a repeated prompt wins, so a prompt always replays the same recording.
            self._by_prompt.setdefault(prompt_key(s.prompt), s.sample_id)
        self.models: tuple[str, ...] = dataset.models

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> ReplayBackend:
        return cls(dataset)

    @classmethod
    def from_dir(cls, path: Path, splits: tuple[str, ...] = ("train", "test")) -> ReplayBackend:
        return cls(load_dir(Path(path), splits))

    def __len__(self) -> int:
        return len(self._by_id)

    def _sample_id(self, key: str) -> str | None:
        if key in self._by_id:
            return key
        return self._by_prompt.get(prompt_key(key))

    async def complete(
        self, spec: ModelSpec, prompt: str, *, query_id: str = "", metadata: dict[str, str] | None = None
    ) -> Completion:
        start = time.perf_counter()
        model = str(spec.options.get("replay_model", spec.name))
        sid = (metadata or {}).get("sample_id")
        if sid is not None:
            rec = self._by_id.get(sid)
            if rec is None:
                raise BackendError(f"replay: no recording with sample_id {sid!r} (query {query_id!r})")
        else:
            found = self._by_prompt.get(prompt_key(prompt))
            if found is None:
                raise BackendError(f"replay: prompt of query {query_id!r} was never recorded: {prompt[:60]!r}")
            rec = self._by_id[found]
        answer = rec.responses.get(model)
        if answer is None or model not in rec.costs:
            raise BackendError(f"replay: model {model!r} has no recording for query {query_id!r}")
        if not answer.strip():
            raise BackendError(f"replay: model {model!r} recorded an empty answer for query {query_id!r}")
        latency_ms = (time.perf_counter() - start) * 1000.0
        return Completion(
            answer=answer,
            confidence=None,
            latency_ms=latency_ms,
            prompt_tokens=estimate_tokens(prompt),
            completion_tokens=estimate_tokens(answer),
            cost_usd=rec.costs[model],
        )

    def verdict(self, key: str, model: str) -> float:
        """Recorded correctness (1.0 / 0.0) of model on a sample_id or prompt: for the feedback poster only."""
        sid = self._sample_id(key)
        if sid is None or model not in self._verdicts[sid]:
            raise BackendError(f"replay: no verdict for model {model!r} on {key[:60]!r}")
        return self._verdicts[sid][model]
