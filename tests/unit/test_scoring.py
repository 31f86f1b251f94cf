"""Scores without gold: weighted votes, checks, composite weights, winner."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.scoring.scoring import score_responses, vote_posterior, winner

MC = "Pick one.\nA) cat\nB) dog\nC) cow\nAnswer:"


def test_agreement_raises_confidence():
    prior = {"a": 0.7, "b": 0.7, "c": 0.7}
    agree = score_responses(MC, {"a": "B", "b": "B"}, prior)
    split = score_responses(MC, {"a": "B", "b": "C"}, prior)
    assert agree["a"].confidence > 0.85 > split["a"].confidence


def test_weighted_vote_follows_the_reliable_model():
    s = score_responses(MC, {"weak1": "A", "weak2": "A", "strong": "C"},
                        {"weak1": 0.4, "weak2": 0.4, "strong": 0.95})
    assert winner(s, ["weak1", "weak2", "strong"]) == "strong"


def test_malformed_answer_never_wins():
    s = score_responses(MC, {"a": "Let me think about it", "b": "A"}, {"a": 0.9, "b": 0.5})
    assert winner(s, ["a", "b"]) == "b" and s["a"].correctness == 0.0


def test_code_that_passes_its_own_tests_beats_broken_code():
    good = "```python\ndef f(x):\n    return x * 2\n\nassert f(2) == 4\n```"
    bad = "```python\ndef f(x):\n    return x * 2\n\nassert f(2) == 5\n```"
    s = score_responses("Write a python function to double x.", {"a": bad, "b": good}, {"a": 0.6, "b": 0.6})
    assert winner(s, ["a", "b"]) == "b"


@pytest.mark.parametrize("weights", [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)])
def test_composite_uses_the_configured_weights(weights):
    s = score_responses(MC, {"a": "B"}, {"a": 0.8}, weights)["a"]
    metric = [s.relevance, s.correctness, s.completeness, s.clarity][weights.index(1)]
    assert s.composite == pytest.approx(metric)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from("mnopq"), st.sampled_from(["A", "B", "C", None]), min_size=1),
       st.floats(0.05, 0.95))
def test_vote_posterior_is_a_distribution(keys, p):
    post = vote_posterior(keys, {m: p for m in keys}, 3)
    assert sum(post.values()) <= 1 + 1e-9 and all(0 <= v <= 1 for v in post.values())
    assert set(post) == {k for k in keys.values() if k}
