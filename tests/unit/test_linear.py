"""Similarity math: unit norms, cosine range, top-k order."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from selfevolve.routing.linear import cosine, normalize, topk

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (5, 8), elements=finite))
def test_normalize_gives_unit_or_zero_rows(x):
    n = np.linalg.norm(normalize(x), axis=1)
    assert np.all((np.abs(n - 1) < 1e-4) | (n == 0))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (4, 6), elements=finite), arrays(np.float32, (3, 6), elements=finite))
def test_cosine_is_bounded(a, b):
    c = cosine(a, b)
    assert c.shape == (4, 3) and np.all(c <= 1 + 1e-4) and np.all(c >= -1 - 1e-4)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, 20, elements=st.floats(-10, 10)), st.integers(0, 25))
def test_topk_matches_full_sort(scores, k):
    idx, vals = topk(scores, k)
    assert len(idx) == min(k, 20)
    assert np.allclose(vals, np.sort(scores)[::-1][: len(idx)])
    assert np.allclose(scores[idx], vals)
