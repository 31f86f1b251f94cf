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
