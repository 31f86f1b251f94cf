"""Calibration: expected calibration error and a per-model histogram-binning map fitted on feedback."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ece(confidence: Sequence[float], outcome: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error: bin-size-weighted |mean confidence - accuracy| over equal-width bins."""
    c = np.asarray(confidence, dtype=float)
    y = np.asarray(outcome, dtype=float)
    if c.size == 0:
        return 0.0
    idx = np.minimum((c * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            err += sel.sum() / c.size * abs(c[sel].mean() - y[sel].mean())
    return float(err)


class Calibrator:
    """Per-model binned map raw confidence -> observed accuracy, shrunk to the raw value when bins are thin."""

    def __init__(self, bins: int = 10, strength: float = 10.0) -> None:
        self.bins, self.strength = bins, strength
        self._n: dict[str, np.ndarray] = {}
        self._hits: dict[str, np.ndarray] = {}

    def _bin(self, p: float) -> int:
        return min(int(p * self.bins), self.bins - 1)

    def update(self, model: str, raw: float, outcome: float) -> None:
        n = self._n.setdefault(model, np.zeros(self.bins))
        h = self._hits.setdefault(model, np.zeros(self.bins))
        b = self._bin(raw)
        n[b] += 1
        h[b] += outcome

    def __call__(self, model: str, raw: float) -> float:
        n = self._n.get(model)
        if n is None:
            return raw
        b = self._bin(raw)
        # A Beta prior centred on the raw score: a thin bin keeps the raw estimate.
        return float((self._hits[model][b] + self.strength * raw) / (n[b] + self.strength))
