"""Unit tests for online domain discovery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.routing import domains
from selfevolve.errors import ValidationError


def _blobs(seed=0, per=30, dim=16, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:3]
    vecs, labels = [], []
    for i in rng.permutation(np.repeat(np.arange(3), per)):
        vecs.append(centres[i] + spread * rng.standard_normal(dim))
        labels.append(int(i))
    return vecs, labels


def _run(vecs, texts=None, **kw):
    state = domains.initialize(**kw)
    ids = []
    for i, v in enumerate(vecs):
        state, d = domains.assign(state, v, texts[i] if texts else "")
        ids.append(d)
    return state, ids


def test_separated_blobs_give_one_domain_each():
    vecs, labels = _blobs()
    state, ids = _run(vecs, radius=0.3)
    assert len(state["centroids"]) == 3
    # Same true label <=> same domain id: a perfect clustering up to renaming.
    pairs = set(zip(labels, ids))
    assert len(pairs) == 3 and len({d for _, d in pairs}) == 3
    assert sum(domains.sizes(state).values()) == len(vecs)


def test_ids_are_stable_in_order_of_first_appearance():
    vecs, _ = _blobs()
    _, ids = _run(vecs, radius=0.3)
    first = list(dict.fromkeys(ids))
    assert first == [0, 1, 2]
    # A point seen again later lands where it landed before.
    state, _ = _run(vecs, radius=0.3)
    for v, d in zip(vecs, ids):
        assert domains.nearest(state, v)[0] == d


@pytest.mark.parametrize(("radius", "at_least", "at_most"), [(1e-6, 80, 90), (2.0, 1, 1)])
def test_radius_controls_granularity(radius, at_least, at_most):
    vecs, _ = _blobs()
    state, _ = _run(vecs, radius=radius, max_domains=1000)
    assert at_least <= len(state["centroids"]) <= at_most


def test_max_domains_caps_by_merging():
    vecs, labels = _blobs()
    state, ids = _run(vecs, radius=1e-6, max_domains=5)
    assert len(state["centroids"]) == 5 and sum(state["counts"]) == len(vecs)
    # Every id ever handed out is either live or resolves to a live one; ids are never reused.
    assert sorted(set(ids)) == list(range(state["next_id"]))
    assert all(domains.resolve(state, d) in state["ids"] for d in ids)
    # Merges follow Ward's criterion, so the three true blobs never share a live domain.
    final = {(t, domains.resolve(state, d)) for t, d in zip(labels, ids)}
    assert len({d for _, d in final}) == len(final)


def test_full_state_joins_nearest_when_merging_costs_more():
    # Two tight, far apart domains: a point near one should join it rather than merge the two.
    state, _ = _run([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0.01, 1, 0]], radius=0.1, max_domains=2)
    state, d = domains.assign(state, [1, 0.2, 0])
    assert d == 0 and state["merged"] == {} and domains.sizes(state) == {0: 3, 1: 2}
    # A point far from both, with the two domains far apart too, still does not merge them.
    state, d = domains.assign(state, [0, 0, 1])
    assert d in (0, 1) and state["merged"] == {}


def test_labels_name_the_topic():
    texts = ["Write a python function to sort a list", "Write a python function that reverses strings",
             "Which planet is closest to the sun", "Which planet has rings"]
    vecs = [[1, 0, 0], [0.95, 0.05, 0], [0, 1, 0], [0, 0.97, 0.05]]
    state, ids = _run(vecs, texts, radius=0.2)
    assert ids == [0, 0, 1, 1]
    assert set(domains.label(state, 0, k=2).split()) == {"python", "function"}
    assert "planet" in domains.label(state, 1, k=2).split()
    assert set(domains.labels(state)) == {0, 1}
    with pytest.raises(ValidationError):
        domains.label(state, 9)


def test_terms_drop_boilerplate():
    assert domains.terms("Print only a single choice from A or B. Which metal rusts? Metal!") == [
        "metal", "rusts"]


@pytest.mark.parametrize("bad", [[0.0, 0.0], [float("nan"), 1.0]])
def test_rejects_degenerate_vectors(bad):
    with pytest.raises(ValidationError):
        domains.assign(domains.initialize(), bad)


def test_bad_parameters():
    with pytest.raises(ValidationError):
        domains.initialize(radius=0)
    with pytest.raises(ValidationError):
        domains.initialize(max_domains=0)


def test_term_bags_stay_bounded():
    state = domains.initialize(radius=2.0, max_terms=20)
    for i in range(50):
        state, _ = domains.assign(state, [1.0, 0.0], f"word{i:03d}x alpha beta")
    assert len(state["terms"][0]) <= 20 and len(state["df"]) <= 160


@given(st.lists(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda v: np.linalg.norm(v) > 1e-3), max_size=25), st.floats(0.05, 1.0))
def test_replay_is_deterministic_and_json_safe(vecs, radius):
    s1, ids1 = _run(vecs, radius=radius)
    s2, ids2 = _run(vecs, radius=radius)
    assert ids1 == ids2
    assert json.loads(json.dumps(s1)) == s2
    assert all(domains.resolve(s1, d) in s1["ids"] for d in ids1)
    assert len(s1["ids"]) <= s1["max_domains"]


def test_labels_skip_a_shared_few_shot_prefix():
    prefix = "Example: volcano lava magma erupts. " * 40
    state = domains.initialize(radius=2.0, tail_chars=30)
    for q in ("Which gas do green plants absorb", "Why do green plants need gas exchange"):
        state, _ = domains.assign(state, [1.0, 0.0], prefix + q)
    assert "volcano" not in state["terms"][0] and "plants" in domains.label(state, 0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda v: 0.1 < float(np.linalg.norm(v))), min_size=1, max_size=25),
    st.integers(0, 12), st.sampled_from([0.05, 0.3, 1.0]), st.integers(1, 4))
def test_a_batch_places_each_query_as_one_at_a_time_would(vecs, split, radius, max_domains):
    """assign_many copies the state once per batch: the result is the fold of assign(), and the
    state it started from is left as it was."""
    texts = [f"topic{i % 3} word{i}" for i in range(len(vecs))]
    head, tail = vecs[:split], vecs[split:]
    start, _ = _run(head, texts[:split], radius=radius, max_domains=max_domains)
    before = json.dumps(start, sort_keys=True)
    batched, ids = domains.assign_many(start, tail, texts[split:])
    state, one_by_one = start, []
    for v, t in zip(tail, texts[split:]):
        state, d = domains.assign(state, v, t)
        one_by_one.append(d)
    assert ids == one_by_one
    assert json.dumps(batched, sort_keys=True) == json.dumps(state, sort_keys=True)
    assert json.dumps(start, sort_keys=True) == before
