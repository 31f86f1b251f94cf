"""Embedder's text cache: same vectors as the model, each distinct text encoded once, bounded size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from selfevolve.config import Settings
from selfevolve.routing.embed import DIM, Embedder


class CountingModel:
    """Stands in for MiniLM: a deterministic vector per text, and a log of what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **_):
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM) for t in texts])


def embedder(cache_size: int) -> tuple[Embedder, CountingModel]:
    e = Embedder(Settings(), cache_size=cache_size)
    e._model = model = CountingModel()
    return e, model


@pytest.mark.parametrize("cache_size, texts, encoded", [
    (10, ["a", "b", "a"], [["a", "b"]]),
    (10, ["a", "a", "a"], [["a"]]),
    (0, ["a", "b"], [["a", "b"]]),
])
def test_each_distinct_text_is_encoded_once_per_call(cache_size, texts, encoded):
    e, model = embedder(cache_size)
    out = e.encode(texts)
    assert model.calls == encoded
    assert out.shape == (len(texts), DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_second_call_is_served_from_the_cache_with_identical_vectors():
    e, model = embedder(10)
    first = e.encode(["x", "y"])
    second = e.encode(["y", "x", "z"])
    assert model.calls == [["x", "y"], ["z"]]
    np.testing.assert_array_equal(second[:2], first[::-1])
    assert (e.hits, e.misses) == (2, 3)


def test_the_cache_forgets_the_least_recently_used_text():
    e, model = embedder(2)
    e.encode(["a"]), e.encode(["b"]), e.encode(["a"]), e.encode(["c"])  # b is now the oldest
    e.encode(["a", "b"])
    assert model.calls[-1] == ["b"]
    assert len(e._cache) == 2


@hsettings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(list("abcdefg")), max_size=30), st.integers(0, 5))
def test_cached_results_equal_uncached_results(texts, size):
    cached, _ = embedder(size)
    plain, _ = embedder(0)
    for chunk in (texts[: len(texts) // 2], texts[len(texts) // 2:]):
        np.testing.assert_array_equal(cached.encode(chunk), plain.encode(chunk))
    assert len(cached._cache) <= size


def test_a_second_embedder_shares_the_model_but_not_the_cache():
    from selfevolve.config import Settings
    from selfevolve.routing.embed import Embedder

    cold = Embedder(Settings(), cache_size=0)
    warm = cold.with_cache_size(10)
    a, b = cold.encode(["a river"]), warm.encode(["a river", "a river"])
    assert warm._model is cold._model and np.allclose(a[0], b[0], atol=1e-6)
    assert (warm.hits, warm.misses) == (1, 1) and (cold.hits, cold.misses) == (0, 1)
