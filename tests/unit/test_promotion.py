"""Unit tests for promotion, demotion and their statistical gate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.evolution import hierarchy as hier
from selfevolve.evolution import promotion
from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution.stats import key

S = Settings()


def _s(n, win_rate, conf):
    wins = round(n * win_rate)
    return {"n": n, "wins": wins, "win_rate": wins / n if n else 0.0, "mean_confidence": conf,
            "mean_quality": 0.5, "mean_cost": 0.0}


def _h():
    return hier.from_roles({"sup": "supervisor", "teach": "teacher", "stu": "student", "ta1": "ta"})


@pytest.mark.parametrize(
    ("model", "s", "expected"),
    [
        ("stu", _s(50, 0.70, 0.85), ("promote", "student", "ta")),   # exactly on every bar
        ("stu", _s(49, 0.90, 0.95), None),                           # too few
        ("stu", _s(100, 0.69, 0.95), None),                          # win rate short
        ("stu", _s(100, 0.90, 0.84), None),                          # confidence short
        ("ta1", _s(60, 0.80, 0.90), ("promote", "ta", "teacher")),
        ("teach", _s(500, 1.0, 1.0), None),                          # teachers never become supervisor
        ("sup", _s(500, 0.0, 0.0), None),                            # supervisors never move
        ("stu", _s(500, 0.0, 0.0), None),                            # nowhere below student
        ("ghost", _s(500, 1.0, 1.0), None),                          # not in the hierarchy
    ],
)
def test_plain_rule(model, s, expected):
    events = promotion.decide({key(model, 2): s}, _h(), S, ts_ms=7)
    if expected is None:
        assert events == []
    else:
        (e,) = events
        assert (e["kind"], e["old_role"], e["new_role"]) == expected
        assert e["model"] == model and e["domain"] == 2 and e["ts_ms"] == 7


def test_global_rows_are_ignored():
    assert promotion.decide({key("stu", -1): _s(100, 1.0, 1.0)}, _h(), S) == []


def test_demotion_of_promoted_model_with_hysteresis():
    h = hier.apply(_h(), hier.event("promote", "stu", 1, "student", "ta"))
    assert promotion.decide({key("stu", 1): _s(80, 0.67, 0.90)}, h, S) == []  # within the margin
    (e,) = promotion.decide({key("stu", 1): _s(80, 0.60, 0.90)}, h, S)
    assert (e["kind"], e["old_role"], e["new_role"]) == ("demote", "ta", "student")
    (e,) = promotion.decide({key("stu", 1): _s(80, 0.90, 0.70)}, h, S)
    assert e["kind"] == "demote"


def test_catalogue_roles_are_a_floor():
    bad = {key("teach", 1): _s(200, 0.1, 0.2), key("ta1", 1): _s(200, 0.1, 0.2)}
    assert promotion.decide(bad, _h(), S) == []
    kinds = {(e["model"], e["kind"]) for e in promotion.decide(bad, _h(), S, floor_at_catalogue=False)}
    assert kinds == {("teach", "demote"), ("ta1", "demote")}


@pytest.mark.parametrize(("wins", "n", "lo", "hi"), [(0, 10, 0.0, 0.213), (10, 10, 0.787, 1.0),
                                                      (70, 100, 0.620, 0.769), (35, 50, 0.586, 0.794)])
def test_wilson_bounds(wins, n, lo, hi):
    assert promotion.wilson_lower(wins, n) == pytest.approx(lo, abs=0.002)
    assert promotion.wilson_upper(wins, n) == pytest.approx(hi, abs=0.002)


def test_gate_needs_more_evidence():
    s = _s(50, 0.76, 0.9)
    assert promotion.decide({key("stu", 0): s}, _h(), S) != []
    assert promotion.decide({key("stu", 0): s}, _h(), S, gated=True) == []
    assert promotion.decide({key("stu", 0): _s(400, 0.76, 0.9)}, _h(), S, gated=True) != []
    # Hoeffding ignores the variance, so it needs more evidence than Wilson for the same rate.
    assert promotion.decide({key("stu", 0): _s(400, 0.76, 0.9)}, _h(), S, gated=True,
                            method="hoeffding") == []
    assert promotion.decide({key("stu", 0): _s(800, 0.76, 0.9)}, _h(), S, gated=True,
                            method="hoeffding") != []
    with pytest.raises(ValidationError):
        promotion.decide({key("stu", 0): s}, _h(), S, gated=True, method="bayes")


def test_gated_demotion_uses_upper_bound():
    h = hier.apply(_h(), hier.event("promote", "stu", 1, "student", "ta"))
    assert promotion.decide({key("stu", 1): _s(50, 0.62, 0.9)}, h, S, gated=True) == []
    assert promotion.decide({key("stu", 1): _s(400, 0.62, 0.9)}, h, S, gated=True) != []


@given(st.integers(0, 400), st.integers(1, 400))
def test_bounds_bracket_the_rate(wins, n):
    wins = min(wins, n)
    p = wins / n
    for lo, hi in [(promotion.wilson_lower, promotion.wilson_upper),
                   (promotion.hoeffding_lower, promotion.hoeffding_upper)]:
        assert lo(wins, n) <= p + 1e-12 and hi(wins, n) >= p - 1e-12


@given(st.integers(1, 300), st.floats(0, 1), st.floats(0, 1))
def test_gated_promotion_implies_plain(n, rate, conf):
    s = _s(n, rate, conf)
    gated = promotion.decide({key("stu", 0): s}, _h(), S, gated=True)
    plain = promotion.decide({key("stu", 0): s}, _h(), S)
    assert len(gated) <= len(plain)
