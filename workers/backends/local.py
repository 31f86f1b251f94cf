"""Local backend: a transformers causal LM (SmolLM2-135M-Instruct or a distilled student) on this host."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from workers.backends.base import Completion
from selfevolve.models.catalogue import ModelSpec, estimate_cost
from selfevolve.config import Settings
from selfevolve.errors import BackendError, SelfEvolveError

DEFAULT_MAX_NEW_TOKENS = 64


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _load_distilled(path: Path, settings: Settings) -> tuple[Any, Any]:
    """A distilled student (selfevolve.distill checkpoint): its LoRA merged into the base for serving."""
    from selfevolve.distill.train import load_checkpoint

    try:
        student, _ = load_checkpoint(path, settings)
    except SelfEvolveError as e:
        raise BackendError(f"cannot load distilled student {path}: {e}") from e
    lm = student.lm.merge_and_unload() if hasattr(student.lm, "merge_and_unload") else student.lm
    lm.eval()
    return lm, student.tokenizer


class LocalBackend:
    """Loads each local model on first use (torch is imported then, never at construction) and keeps it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._models: dict[str, tuple[Any, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Checkpoints set by reload(): per model name, or under None for every local model.
        self._checkpoints: dict[str | None, Path] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._cache: dict[Path | None, tuple[Any, Any]] = {}

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def checkpoint_for(self, spec: ModelSpec) -> Path | None:
        """What spec runs: a reloaded checkpoint, else options.model_path, else the base SmolLM2 (None)."""
        path = self._checkpoints.get(spec.name) or self._checkpoints.get(None) or spec.options.get("model_path")
        return None if path is None else Path(path)

    def _load(self, checkpoint: Path | None, base: Path | None) -> tuple[Any, Any]:
        """(model, tokenizer) from a full checkpoint dir, or base + a LoRA adapter dir merged into it."""
        import torch

        from selfevolve.distill.lm import load_causal_lm

        torch.set_num_threads(1)  # the serving host's cores are shared with the stream processors
        if checkpoint is not None and checkpoint.suffix == ".safetensors":
            return _load_distilled(checkpoint, self._settings)
        if checkpoint is None or not _is_adapter(checkpoint):
            return load_causal_lm(checkpoint, self._settings)
        from peft import PeftModel

        model, tokenizer = load_causal_lm(base, self._settings)
        try:
            merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
        except Exception as e:  # peft raises many types for a bad or mismatched adapter
            raise BackendError(f"cannot apply LoRA adapter {checkpoint}: {e}") from e
        merged.eval()
        return merged, tokenizer

    async def _ensure(self, spec: ModelSpec) -> tuple[Any, Any]:
        if spec.name in self._models:
            return self._models[spec.name]
        async with self._lock(spec.name):
            if spec.name not in self._models:
                path = self.checkpoint_for(spec)
                if path not in self._cache:  # models on the same checkpoint share one copy of the weights
                    self._cache[path] = await self._load_async(path, spec)
                self._specs[spec.name] = spec
                self._models[spec.name] = self._cache[path]
        return self._models[spec.name]

    async def _load_async(self, path: Path | None, spec: ModelSpec | None) -> tuple[Any, Any]:
        base = None if spec is None else spec.options.get("base_model_path")
        try:
            return await asyncio.to_thread(self._load, path, None if base is None else Path(base))
        except BackendError:
            raise
        except (SelfEvolveError, OSError) as e:
            raise BackendError(f"cannot load local model {path or 'SmolLM2-135M (base)'}: {e}") from e

    async def reload(self, checkpoint_path: Path, *, model: str | None = None, spec: ModelSpec | None = None) -> None:
        """Serve checkpoint_path (LoRA adapter dir or full checkpoint) from now on, without a restart.

        model=None applies it to every local model without its own reload. spec supplies
        options.base_model_path for an adapter (default: the base SmolLM2). The new weights load in a thread
        while the old ones keep answering; the swap is a dict assignment, so no request sees half a model.
        """
        checkpoint_path = Path(checkpoint_path)
        if not (checkpoint_path.is_dir() or checkpoint_path.suffix == ".safetensors" and checkpoint_path.is_file()):
            raise BackendError(f"checkpoint {checkpoint_path} is neither a model directory nor a distilled student")
        loaded = await self._load_async(checkpoint_path, spec)
        self._cache[checkpoint_path] = loaded
        self._checkpoints[model] = checkpoint_path
        for name, known in self._specs.items():
            if self.checkpoint_for(known) == checkpoint_path:
                self._models[name] = loaded
        # Drop superseded versions nobody serves any more, so repeated reloads don't pile up weights.
        live = {id(m) for m in self._models.values()} | {id(loaded)}
        self._cache = {k: v for k, v in self._cache.items() if id(v) in live}

    async def preload(self, specs) -> None:
        """Load these models now. A first request would otherwise wait out the load inside its own timeout
        (loading SmolLM2 took 10 s to 50 s on these shared cores, against a 30 s backend timeout)."""
        for spec in specs:
            await self._ensure(spec)

    def loaded(self) -> tuple[str, ...]:
        return tuple(self._models)

    async def complete(
        self, spec: ModelSpec, prompt: str, *, query_id: str = "", metadata: dict[str, str] | None = None
    ) -> Completion:
        # Wall time of the whole call, a first call's model load included: that is what the caller waited.
        start = time.perf_counter()
        model, tokenizer = await self._ensure(spec)
        max_new = int(spec.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        # One generation at a time per model: CPU-bound, and concurrent generate() calls only thrash the cores.
        async with self._lock(spec.name):
            try:
                answer, confidence, prompt_tokens, completion_tokens = await asyncio.to_thread(
                    _generate, model, tokenizer, prompt, max_new
                )
            except Exception as e:  # torch / transformers raise many types mid-generation
                raise BackendError(f"{spec.name}: generation failed for query {query_id!r}: {e}") from e
        return Completion(
            answer=answer,
            confidence=confidence,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=estimate_cost(spec, prompt_tokens, completion_tokens),
        )


def _generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> tuple[str, float, int, int]:
    from selfevolve.distill.lm import chat_ids, generate

    answer, confidence = generate(model, tokenizer, prompt, max_new_tokens)
    prompt_tokens = len(chat_ids(tokenizer, prompt))
    # generate() returns text; re-encoding it counts the answer's tokens (off by the stripped special tokens).
    completion_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return answer, confidence, prompt_tokens, completion_tokens
