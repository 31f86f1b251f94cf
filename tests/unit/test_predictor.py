"""Quality predictor: learns per-model quality over the embedding, forgets corrected verdicts, survives save."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.errors import StoreError
from selfevolve.routing.linear import normalize
from selfevolve.routing.predictor import CENTRE, Predictor


def _two_clusters(n=200, seed=0):
    """Queries around two directions; model 'a' is right on the first cluster only, 'b' on both."""
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((2, 16)))
    side = rng.integers(0, 2, n)
    vecs = normalize(centres[side] + 0.2 * rng.standard_normal((n, 16)))
    return vecs, side, centres


def test_without_verdicts_every_model_predicts_the_centre():
    p = Predictor(8)
    mean, evidence = p.predict(normalize(np.ones((3, 8))), ["a", "b"])
    assert np.allclose(mean, CENTRE) and np.all(evidence > 0)


def test_learns_where_each_model_is_right():
    vecs, side, centres = _two_clusters()
    p = Predictor(16, reg=1.0)
    for v, s in zip(vecs, side):
        p.update(v, "a", float(s == 0))
        p.update(v, "b", 1.0)
    mean, _ = p.predict(centres, ["a", "b"])
    assert mean[0, 0] > 0.8 and mean[1, 0] < 0.2  # a: right on cluster 0, wrong on cluster 1
    assert mean[0, 1] > 0.9 and mean[1, 1] > 0.9
    assert p.count("a") == len(vecs) and p.count("unknown") == 0


def test_evidence_grows_with_the_verdicts_near_the_query():
    vecs, side, centres = _two_clusters()
    p = Predictor(16)
    for v, s in zip(vecs, side):
        if s == 0:
            p.update(v, "a", 1.0)
    _, evidence = p.predict(centres, ["a"])
    assert evidence[0, 0] > 5 * evidence[1, 0]


def test_forgetting_a_verdict_undoes_it():
    vecs, side, _ = _two_clusters(50)
    p, q = Predictor(16), Predictor(16)
    for v, s in zip(vecs, side):
        p.update(v, "a", float(s))
        q.update(v, "a", float(s))
    p.update(vecs[3], "a", 1.0)
    p.update(vecs[3], "a", 1.0, sign=-1)
    assert np.allclose(p.predict(vecs, ["a"])[0], q.predict(vecs, ["a"])[0], atol=1e-9)


def test_mean_is_the_same_alone_or_in_a_batch():
    vecs, side, _ = _two_clusters(60)
    p = Predictor(16)
    for v, s in zip(vecs, side):
        p.update(v, "a", float(s))
    batch = p.mean(vecs, ["a"])
    assert all(p.mean(vecs[i:i + 1], ["a"])[0, 0] == batch[i, 0] for i in range(len(vecs)))
    assert np.allclose(batch, p.predict(vecs, ["a"])[0])


def test_state_round_trip_predicts_the_same():
    vecs, side, _ = _two_clusters(40)
    p = Predictor(16, reg=3.0)
    for v, s in zip(vecs, side):
        p.update(v, "a", float(s))
        p.update(v, "b", 1.0 - s)
    q = Predictor.from_state(p.to_state())
    assert q.reg == 3.0 and q.count("b") == 40
    assert np.array_equal(p.predict(vecs, ["a", "b"])[0], q.predict(vecs, ["a", "b"])[0])


def test_malformed_state_and_bad_input_are_refused():
    p = Predictor(4)
    p.update(normalize(np.ones(4)), "a", 1.0)
    state = p.to_state()
    del state["b_0"]
    with pytest.raises(StoreError):
        Predictor.from_state(state)
    with pytest.raises(StoreError):
        p.update(np.ones(5), "a", 1.0)
    with pytest.raises(StoreError):
        Predictor(4, reg=0.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=40))
def test_predictions_stay_in_the_unit_interval_and_are_deterministic(verdicts):
    vecs = normalize(np.random.default_rng(1).standard_normal((20, 8)))
    p, q = Predictor(8, reg=0.5), Predictor(8, reg=0.5)
    for i, y in verdicts:
        p.update(vecs[i], "m", y)
        q.update(vecs[i], "m", y)
    mean, evidence = p.predict(vecs, ["m"])
    assert np.all((mean >= 0) & (mean <= 1)) and np.all(evidence > 0)
    assert np.array_equal(mean, q.predict(vecs, ["m"])[0])
