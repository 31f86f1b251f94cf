"""Bandit feedback: learn only about models that were called, and only after delivery."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.scoring import arbiter

from selfevolve.routing import learning
from selfevolve.routing.history import History, Record


def _delivered(h: History, called=("a", "b")):
    v = arbiter.Verdict("q1", called[0], "A", 0.9, {}, tuple(called), (), 0.003, "hybrid", 1,
                        {m: 0.001 for m in called})
    learning.record_delivery(h, np.ones(384, np.float32), v)
    return v


def test_feedback_for_a_called_model_is_learnt():
    h = History()
    _delivered(h)
    assert learning.apply_feedback(h, learning.Feedback("q1", "a", 1.0))
    assert h.get("q1").quality["a"] == 1.0 and h.model_mean("a")[:2] == (1.0, 1)


def test_nothing_is_learnt_about_a_model_that_was_not_called():
    h = History()
    _delivered(h)
    assert not learning.apply_feedback(h, learning.Feedback("q1", "c", 1.0))
    assert "c" not in h.get("q1").quality and h.model_mean("c") == (None, 0, None)


def test_nothing_is_learnt_before_delivery():
    h = History()
    assert not learning.apply_feedback(h, learning.Feedback("unknown", "a", 1.0))
    h.add(np.ones(384, np.float32), Record("q2", costs={"a": 0.1}, quality={"a": None}, delivered=False))
    assert not learning.apply_feedback(h, learning.Feedback("q2", "a", 1.0))
    assert h.get("q2").quality["a"] is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([0.0, 1.0])), max_size=12))
def test_only_called_models_ever_carry_quality(feedback):
    h = History()
    _delivered(h, called=("a", "c"))
    for m, q in feedback:
        learning.apply_feedback(h, learning.Feedback("q1", m, q))
    known = {m for m, q in h.get("q1").quality.items() if q is not None}
    assert known <= {"a", "c"}
    assert all(h.model_mean(m)[1] == 0 for m in "bdef")
