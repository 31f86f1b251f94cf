"""Unit tests for windowed gap detection."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.evolution import gaps
from selfevolve.config import Settings
from selfevolve.errors import ValidationError

S = Settings()  # θgap = 0.5, failure rate bar 0.3


def _run(outcomes, state=None, domain=0):
    state = state or gaps.initialize(window=10, hop=5, min_n=10)
    out = []
    for i, (conf, failed) in enumerate(outcomes):
        state, recs = gaps.step(state, {"domain": domain, "confidence": conf, "failed": failed,
                                        "ts_ms": i}, S)
        out += recs
    return state, out


@pytest.mark.parametrize(
    ("outcomes", "kinds"),
    [
        ([(0.9, False)] * 30, []),
        ([(0.4, False)] * 9, []),                        # not enough in the window yet
        ([(0.4, False)] * 10, ["open"]),                 # mean confidence below 0.5
        ([(0.9, True)] * 4 + [(0.9, False)] * 6, ["open"]),   # failure rate 0.4 > 0.3
        ([(0.9, True)] * 3 + [(0.9, False)] * 7, []),    # failure rate 0.3 is not above the bar
        ([(0.4, False)] * 10 + [(0.45, False)] * 10, ["open"]),  # stays open: no repeat
        ([(0.4, False)] * 10 + [(0.9, False)] * 10, ["open", "close"]),
        ([(0.4, False)] * 10 + [(0.9, False)] * 10 + [(0.1, True)] * 10, ["open", "close", "open"]),
    ],
)
def test_open_close(outcomes, kinds):
    state, recs = _run(outcomes)
    assert [r["kind"] for r in recs] == kinds
    assert gaps.counts(state)["opened"] == kinds.count("open")
    assert gaps.counts(state)["closed"] == kinds.count("close")
    assert gaps.open_gaps(state) == ([0] if kinds and kinds[-1] == "open" else [])


def test_record_fields():
    _, (rec,) = _run([(0.2, True)] * 10)
    assert rec["domain"] == 0 and rec["traffic"] == 10 and rec["ts_ms"] == 9
    assert rec["mean_confidence"] == pytest.approx(0.2) and rec["failure_rate"] == 1.0
    assert rec["priority"] == pytest.approx(0.9 * 10 / 20)
    assert set(rec) == {"version", "domain", "kind", "mean_confidence", "failure_rate", "traffic",
                        "priority", "ts_ms"}


def test_domains_are_independent():
    state, recs = _run([(0.2, True)] * 10, domain=1)
    state, recs2 = _run([(0.9, False)] * 10, state, domain=2)
    assert recs2 == [] and gaps.open_gaps(state) == [1]


def test_bad_window():
    with pytest.raises(ValidationError):
        gaps.initialize(window=10, min_n=11)


@given(st.floats(0, 1), st.floats(0, 1), st.integers(1, 10_000), st.floats(0, 0.5), st.floats(0, 0.5))
def test_priority_monotone(conf, fail, traffic, dc, df):
    p = gaps.priority(conf, fail, traffic, 100)
    assert 0.0 <= p <= 1.0
    assert gaps.priority(max(0.0, conf - dc), fail, traffic, 100) >= p - 1e-12
    assert gaps.priority(conf, min(1.0, fail + df), traffic, 100) >= p - 1e-12
    assert gaps.priority(conf, fail, traffic + 1, 100) >= p - 1e-12


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), max_size=80))
def test_opens_and_closes_alternate(outcomes):
    state, recs = _run(outcomes)
    kinds = [r["kind"] for r in recs]
    assert all(k == ("open" if i % 2 == 0 else "close") for i, k in enumerate(kinds))
    assert json.loads(json.dumps(state)) == state
