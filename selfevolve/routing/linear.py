"""Similarity math over L2-normalised float32 vectors: normalise, cosine, top-k."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return normalize(x[None])[0]
    # Scale by the largest entry first so tiny or huge rows neither underflow nor overflow in float32.
    m = np.abs(x).max(axis=1, keepdims=True) if x.size else np.ones((x.shape[0], 1), np.float32)
    y = x / np.where(m > 0, m, 1.0)
    n = np.linalg.norm(y, axis=1, keepdims=True)
    return (y / np.where(n > 0, n, 1.0)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix between the rows of a (n, d) and b (m, d)."""
    return normalize(np.atleast_2d(a)) @ normalize(np.atleast_2d(b)).T


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of a 1-D array, best first."""
    scores = np.asarray(scores).ravel()
    k = max(0, min(k, scores.size))
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=scores.dtype)
    # argpartition keeps this O(n) before sorting only the k winners
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx.astype(np.int64), scores[idx]
