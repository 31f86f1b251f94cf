"""Vectors of many texts, cached on disk per text and per embedder: what benchmarks and replays route with.

A replay embeds every query text once, up front (one batch, one thread), and then routes with a lookup by
text: the router gets the very vectors the cache holds, on every run, whatever the batches. The cache file
is replaced atomically, so a run killed mid-write leaves the previous one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from selfevolve.config import Settings
from selfevolve.errors import ConfigError


def cache_path(settings: Settings) -> Path:
    """One file per vector space (embed.embedder_id): vectors of two embedders are never mixed."""
    from selfevolve.routing.embed import embedder_id

    return Path(settings.cache_dir) / "embed" / f"{embedder_id(settings)}.npz"


def embed_all(settings: Settings, prompts: Sequence[str], log: Callable[[str], None] = print) -> np.ndarray:
    """settings.embedder's vectors of prompts, cached per text under settings.cache_dir (any order, any subset)."""
    from selfevolve.routing.embed import Embedder

    path = cache_path(settings)
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cache = dict(zip(z["keys"].tolist(), z["vecs"]))
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        text = dict(zip(keys, prompts))
        t = time.perf_counter()
        vecs = Embedder(settings).encode([text[k] for k in missing])
        dt = time.perf_counter() - t
        log(f"embedded {len(missing)} prompts with {settings.embedder} in {dt:.1f}s "
            f"({len(missing) / max(dt, 1e-9):.1f} texts/s, 1 thread)")
        cache.update(zip(missing, vecs))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
        np.savez(tmp, keys=np.array(list(cache)), vecs=np.stack(list(cache.values())))
        os.replace(tmp, path)
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cache[k] for k in keys])


def lookup(texts: Sequence[str], vecs: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """An embedder function over precomputed vectors: texts -> their rows (a text never seen is an error)."""
    table = {t: np.asarray(v, dtype=np.float32) for t, v in zip(texts, vecs)}

    def encode(batch: list[str]) -> np.ndarray:
        try:
            return np.stack([table[t] for t in batch])
        except KeyError as e:
            raise ConfigError(f"no precomputed vector for a text of {len(e.args[0])} characters") from e

    return encode
