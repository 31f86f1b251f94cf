"""Plan values: the arbiter's own posterior, the bar λ sets, quality first at λ=0, cost falling with λ."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.routing.plans import Prices, alone, best_plan, outcomes, voters, weak_first
from selfevolve.scoring.scoring import vote_posterior

USD = {"top": 1.0, "a": 0.05, "b": 0.08, "c": 0.02}


def _prices(q, lam, usd=USD, bonus=0.0):
    return Prices(q=q, price={m: lam * usd[m] / usd["top"] for m in q}, usd=usd, bonus=lambda m: bonus)


@pytest.mark.parametrize("q1, q2, options", [(0.8, 0.7, 4), (0.6, 0.9, 2), (0.99, 0.3, 5)])
def test_outcome_confidences_are_the_arbiters_vote_posterior(q1, q2, options):
    (agree_right, agree), (split_right, split) = outcomes(q1, q2, options)
    prior = {"a": q1, "b": q2}
    assert agree_right / agree == pytest.approx(vote_posterior({"a": "A", "b": "A"}, prior, options)["A"])
    stronger = "A" if q1 >= q2 else "B"
    post = vote_posterior({"a": "A", "b": "B"}, prior, options)
    assert split_right / split == pytest.approx(post[stronger]) and post[stronger] == max(post.values())
    assert agree + split == pytest.approx(1.0)


def test_weak_first_is_delivered_above_the_bar_and_worth_top_below_it():
    q = {"top": 0.9, "a": 0.85}
    p = _prices(q, 0.1)
    bar = 0.9 - 0.1
    up = weak_first("a", "top", bar, p)
    assert up.escalation == (("top",),) and up.value == pytest.approx(0.85 - 0.005) and up.expected_cost == 0.05
    low = _prices({"top": 0.9, "a": 0.7}, 0.1)
    down = weak_first("a", "top", bar, low)  # always escalates: paid twice, never better than top alone
    assert down.value < alone("top", low).value and down.expected_cost == pytest.approx(1.05)
    explore = _prices({"top": 0.9, "a": 0.7}, 0.1, bonus=0.2)  # optimism where a's answer would stand
    assert weak_first("a", "top", bar, explore).expected_cost == 0.05
    assert weak_first("a", "top", -0.1, p).escalation == ()


def test_two_agreeing_voters_beat_either_and_a_split_escalates():
    q = {"top": 0.95, "a": 0.8, "b": 0.8}
    p = _prices(q, 0.1)
    v = voters("a", "b", "top", 0.85, 4, p)
    (agree_right, agree), (_, split) = outcomes(0.8, 0.8, 4)
    assert agree_right / agree > 0.85 > 0.8  # agreement clears a bar neither voter clears alone
    assert v.expected_cost == pytest.approx(0.05 + 0.08 + split * 1.0)
    assert v.value == pytest.approx(agree_right + split * 0.95 - 0.1 * (0.05 + 0.08 + split))


_q = st.floats(0.05, 0.99)


@settings(max_examples=60, deadline=None)
@given(qt=_q, qa=_q, qb=_q, qc=_q, options=st.sampled_from([0, 2, 4]), bonus=st.floats(0.0, 0.1))
def test_lambda_zero_is_quality_first(qt, qa, qb, qc, options, bonus):
    q = {"top": qt, "a": qa, "b": qb, "c": qc}
    plan = best_plan(list(q), "top", ["a", "b", "c"], qt, options, _prices(q, 0.0, bonus=0.0))
    assert plan.value >= max(q.values()) - 1e-12  # nothing expected to be right less often than the best model


@settings(max_examples=60, deadline=None)
@given(qt=_q, qa=_q, qb=_q, qc=_q, options=st.sampled_from([0, 2, 4]), bonus=st.floats(0.0, 0.1),
       lams=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=8))
def test_expected_cost_falls_as_lambda_rises(qt, qa, qb, qc, options, bonus, lams):
    q = {"top": qt, "a": qa, "b": qb, "c": qc}
    costs = []
    for lam in sorted(lams):
        p = _prices(q, lam, bonus=bonus)
        costs.append(best_plan(list(q), "top", ["a", "b", "c"], qt - lam, options, p).expected_cost)
    assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:]))


@settings(max_examples=40, deadline=None)
@given(qt=_q, qa=_q, qb=_q, options=st.sampled_from([0, 2, 4]))
def test_a_huge_lambda_never_plans_an_escalation(qt, qa, qb, options):
    q = {"top": qt, "a": qa, "b": qb, "c": 0.5}
    plan = best_plan(list(q), "top", ["a", "b", "c"], qt - 1e6, options, _prices(q, 1e6))
    assert plan.escalation == () and plan.first == ("c",)  # the cheapest model alone
