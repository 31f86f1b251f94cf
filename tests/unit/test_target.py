"""Quality target: audits chosen by hash, an unbiased ratio with an interval, λ moved to meet the target."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.errors import ConfigError
from selfevolve.routing.target import (LAMBDA_MAX, LAMBDA_MIN, Observation, TargetState, audit_due, control,
                                       observe, ratio, report)


def test_audits_are_a_fixed_fraction_chosen_by_key():
    keys = [f"default/q{i}" for i in range(20_000)]
    picked = [audit_due(k, 0.1) for k in keys]
    assert 0.09 < np.mean(picked) < 0.11
    assert picked == [audit_due(k, 0.1) for k in keys]
    assert not any(audit_due(k, 0.0) for k in keys[:100])


def _feed(state, n, system_acc, sup_acc, predicted, seed=0, lam_fn=None):
    """n queries: delivered answers right with system_acc (or lam_fn(λ)), the supervisor with sup_acc."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        acc = lam_fn(state.cost_lambda) if lam_fn else system_acc
        audited = audit_due(f"q{seed}-{i}", state.rate)
        sup = float(rng.random() < sup_acc) if audited else None
        state = observe(state, Observation(float(rng.random() < acc), predicted, sup, audited, 0.01 * audited))
    return state


def test_the_ratio_is_unbiased_when_the_predictions_are_off_and_the_interval_covers_it():
    # The router thinks the supervisor is right 60% of the time; it is right 90%: audits correct that.
    s = _feed(TargetState(target=None, cost_lambda=0.1, rate=0.2, half_life=1e9), 4000, 0.81, 0.9, 0.6)
    r, low, high = ratio(s, z=1.96)
    assert r == pytest.approx(0.9, abs=0.04) and low < 0.9 < high
    rep = report(s)
    assert rep["audits"] == s.audits > 600 and rep["audit_cost_usd"] == pytest.approx(0.01 * s.audits)
    assert rep["interval"] == [low, high] and rep["queries"] == 4000


def test_no_audit_means_no_interval_and_no_move():
    s = TargetState(target=0.95, cost_lambda=0.3, rate=0.0)
    s = _feed(s, 200, 0.5, 0.9, 0.9)
    assert math.isinf(ratio(s)[2]) and s.cost_lambda == 0.3


def test_without_a_target_lambda_stays():
    s = _feed(TargetState(target=None, cost_lambda=0.25, rate=0.2), 500, 0.2, 0.9, 0.9)
    assert s.cost_lambda == 0.25 and control(s) is s


def test_controller_lowers_lambda_when_quality_is_short_and_raises_it_when_ample():
    short = _feed(TargetState(target=0.95, cost_lambda=1.0, rate=0.3), 400, 0.6, 0.9, 0.9)
    ample = _feed(TargetState(target=0.8, cost_lambda=0.01, rate=0.3), 400, 0.9, 0.9, 0.9)
    assert short.cost_lambda < 1.0 and ample.cost_lambda > 0.01
    assert LAMBDA_MIN <= short.cost_lambda and ample.cost_lambda <= LAMBDA_MAX


def test_controller_settles_where_the_target_is_met():
    """A system whose quality falls with λ (ratio 1 - 0.25·λ): the target 0.95 is met from λ=0.2 down."""
    def acc(lam):
        return 0.9 * (1 - 0.25 * min(lam, 4.0))

    s = _feed(TargetState(target=0.95, cost_lambda=2.0, rate=0.3, every=50), 6000, None, 0.9, 0.9, lam_fn=acc)
    assert 0.02 < s.cost_lambda < 0.25
    r, _, _ = ratio(s)
    assert r > 0.93


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError):
        TargetState(target=0.0, cost_lambda=0.1)
    with pytest.raises(ConfigError):
        TargetState(target=0.9, cost_lambda=0.1, rate=2.0)
    with pytest.raises(ConfigError):  # the rate only falls: a base above the start would have it rise
        TargetState(target=0.9, cost_lambda=0.1, rate=0.05, base_rate=0.2)


@pytest.mark.parametrize(("calibration", "audits", "rate"), [(3, 2, 0.2), (3, 3, 0.05), (3, 9, 0.05), (0, 1, 0.05)])
def test_the_audit_rate_falls_to_the_base_rate_once_calibrated(calibration, audits, rate):
    s = TargetState(target=0.9, cost_lambda=0.1, rate=0.2, base_rate=0.05, calibration=calibration)
    for i in range(audits):
        s = observe(s, Observation(1.0, 0.0, 1.0, True))
    assert s.rate == rate and s.audits == audits
    assert TargetState(target=0.9, cost_lambda=0.1, rate=0.2).rate == 0.2  # no base: it stays


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.floats(0, 1), st.floats(0, 1))
def test_an_audit_due_at_a_lower_rate_is_due_at_every_higher_one(key, r1, r2):
    # Why a falling rate keeps audits a uniform sample: the meta-learner counts a supervisor verdict as an
    # audit if due at its rate now, which is at most the rate the router routed that query with.
    low, high = sorted((r1, r2))
    assert not audit_due(key, low) or audit_due(key, high)


@pytest.mark.parametrize(("audits", "moves"), [(19, False), (20, True)])
def test_lambda_stays_until_enough_audits(audits, moves):
    s = TargetState(target=0.95, cost_lambda=0.5, rate=1.0, every=1)
    for i in range(5):  # the system far short of the target, and no audit yet
        s = observe(s, Observation(float(i == 0), 0.0))
    for i in range(audits - 1):
        s = observe(s, Observation(None, 0.0, float(i % 2), True))  # audit verdicts alone never move λ
    assert s.cost_lambda == 0.5 and s.seen == 5 and s.audits == audits - 1
    s = observe(s, Observation(0.0, 0.0, 1.0, True))  # one query: its system verdict and its audit
    assert (s.cost_lambda < 0.5) == moves and s.audits == audits and s.seen == 6


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1)), st.floats(0, 1), st.booleans()), max_size=60))
def test_the_state_round_trips_through_json(obs):
    import json

    from selfevolve.routing.target import from_json, to_json

    s = TargetState(target=0.9, cost_lambda=0.2, rate=0.5, every=7)
    for system, q, audited in obs:
        s = observe(s, Observation(system, 0.3, q if audited else None, audited, 0.01 * audited))
    assert from_json(json.loads(json.dumps(to_json(s)))) == s
