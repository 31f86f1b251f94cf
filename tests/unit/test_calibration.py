"""Calibration error and the per-model binning map."""

import numpy as np
import pytest

from selfevolve.scoring.calibration import Calibrator, ece


def test_ece_is_zero_when_confidence_matches_frequency():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=20000)
    out = rng.uniform(size=20000) < conf
    assert ece(conf, out) < 0.02


def test_ece_sees_overconfidence():
    assert ece([0.95] * 100, [1] * 60 + [0] * 40) == pytest.approx(0.35)


def test_calibrator_moves_towards_observed_accuracy():
    c = Calibrator(strength=5)
    for i in range(200):
        c.update("m", 0.9, float(i % 2))
    assert c("m", 0.9) == pytest.approx(0.5, abs=0.05)
    assert c("m", 0.3) == 0.3 and c("other", 0.7) == 0.7
