"""History: nearest search, restart survival, flat-to-HNSW migration."""

import numpy as np
import pytest

from selfevolve.errors import StoreError
from selfevolve.routing.history import History, Record
from selfevolve.routing.linear import normalize


def _vecs(n, seed=0):
    return normalize(np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32))


def test_search_returns_the_query_itself_first():
    h = History()
    v = _vecs(50)
    h.add_many(v, [Record(f"q{i}", costs={"m": 0.1}) for i in range(50)])
    rec, sim = h.search(v[7], 3)[0]
    assert rec.query_id == "q7" and sim == pytest.approx(1.0, abs=1e-5)


def test_save_and_load_survive_a_restart(tmp_path):
    h = History()
    v = _vecs(20)
    h.add_many(v, [Record(f"q{i}", costs={"a": 0.01}, quality={"a": None}) for i in range(20)])
    h.set_quality("q3", "a", 1.0)
    h.save(tmp_path)
    g = History.load(tmp_path)
    assert len(g) == 20 and g.get("q3").quality["a"] == 1.0
    assert g.model_mean("a") == h.model_mean("a")
    assert [r.query_id for r, _ in g.search(v[5], 4)] == [r.query_id for r, _ in h.search(v[5], 4)]


def test_migrates_to_hnsw_past_the_flat_limit_and_still_finds_neighbours(tmp_path):
    h = History(flat_limit=100)
    v = _vecs(300)
    h.add_many(v[:100], [Record(f"q{i}") for i in range(100)])
    assert h.kind == "flat"
    h.add_many(v[100:], [Record(f"q{i}") for i in range(100, 300)])
    assert h.kind == "hnsw"
    hits = [h.search(v[i], 1)[0][0].query_id == f"q{i}" for i in range(0, 300, 7)]
    assert np.mean(hits) > 0.95
    h.save(tmp_path)
    assert History.load(tmp_path).kind == "hnsw"


def test_duplicate_query_id_is_refused():
    h = History()
    h.add(_vecs(1)[0], Record("q"))
    with pytest.raises(StoreError):
        h.add(_vecs(1, 1)[0], Record("q"))


def test_a_batch_with_a_duplicate_changes_nothing():
    h = History()
    h.add(_vecs(1)[0], Record("q0"))
    with pytest.raises(StoreError):
        h.add_many(_vecs(3, 2), [Record("a"), Record("b"), Record("a")])
    with pytest.raises(StoreError):
        h.add_many(_vecs(2, 3), [Record("c"), Record("q0")])
    assert len(h) == 1 == h.index.ntotal and h.get("a") is None and h.get("c") is None


def _half_right(n=60):
    """Model 'a' right on the first half of the directions, wrong on the rest; feedback after delivery."""
    h = History()
    v = _vecs(n)
    h.add_many(v, [Record(f"q{i}", costs={"a": 0.01}, quality={"a": None}) for i in range(n)])
    for i in range(n):
        h.set_quality(f"q{i}", "a", float(i < n // 2))
    return h, v


def test_verdicts_train_the_predictor_and_a_correction_replaces_the_old_verdict():
    h, v = _half_right()
    assert h.predictor.count("a") == 60
    mean, _ = h.predict(v, ["a"])
    assert mean[:30, 0].min() > 0.5 > mean[30:, 0].max()  # each verdict pulls its own query its way
    h.set_quality("q0", "a", 0.0)  # corrected: still one verdict for q0
    assert h.predictor.count("a") == 60 and h.model_mean("a")[1] == 60
    g = History()
    g.add_many(v, [Record(f"q{i}", costs={"a": 0.01}, quality={"a": float(0 < i < 30)}) for i in range(60)])
    assert np.allclose(g.predict(v, ["a"])[0], h.predict(v, ["a"])[0], atol=1e-9)


def test_the_predictor_survives_a_restart_and_an_old_snapshot_retrains_it(tmp_path):
    h, v = _half_right()
    h.save(tmp_path)
    assert np.array_equal(History.load(tmp_path).predict(v, ["a"])[0], h.predict(v, ["a"])[0])
    (tmp_path / "predictor.npz").unlink()  # a snapshot from before the predictor
    assert np.allclose(History.load(tmp_path).predict(v, ["a"])[0], h.predict(v, ["a"])[0], atol=1e-9)
    (tmp_path / "predictor.npz").write_bytes(b"not an npz")
    with pytest.raises(StoreError):
        History.load(tmp_path)


def test_a_migrated_index_still_gives_the_vectors_verdicts_train_on():
    h = History(flat_limit=10)
    v = _vecs(30)
    h.add_many(v, [Record(f"q{i}", costs={"a": 0.01}, quality={"a": None}) for i in range(30)])
    assert h.kind == "hnsw"
    assert np.allclose(h.vector("q7"), v[7], atol=1e-6)
    h.set_quality("q7", "a", 1.0)
    assert h.predictor.count("a") == 1
