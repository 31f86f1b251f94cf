"""Unit tests for the per-(model, domain) statistics aggregators."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.evolution import stats
from selfevolve.errors import ValidationError


def _ev(winner=True, conf=0.9, quality=1.0, cost=0.01, model="m", domain=0, ts=0):
    return {"model": model, "domain": domain, "winner": winner, "confidence": conf,
            "quality": quality, "cost_usd": cost, "ts_ms": ts}


def test_all_time_means():
    s = stats.initialize()
    for e in [_ev(True, 0.9, 1.0, 0.01), _ev(False, 0.5, 0.0, 0.03), _ev(True, 0.7, 1.0, 0.02)]:
        s = stats.agg(s, e)
    r = stats.result(s)
    assert r["n"] == 3 and r["wins"] == 2
    assert r["win_rate"] == pytest.approx(2 / 3)
    assert r["mean_confidence"] == pytest.approx(0.7)
    assert r["mean_quality"] == pytest.approx(2 / 3)
    assert r["mean_cost"] == pytest.approx(0.02)


def test_quality_falls_back_to_composite():
    s = stats.agg(stats.initialize(), {"winner": False, "confidence": 0.4, "composite": 0.25})
    assert stats.result(s)["mean_quality"] == pytest.approx(0.25)


def test_empty_result_is_zero():
    assert stats.result(stats.initialize())["n"] == 0
    assert stats.window_result(stats.window_initialize(10))["win_rate"] == 0.0


@pytest.mark.parametrize(
    ("size", "hop", "n_events", "expected_n"),
    [
        (10, 10, 5, 5),     # tumbling, first window partly filled
        (10, 10, 10, 10),
        (10, 10, 13, 3),    # tumbling: a new window started at event 10
        (10, 5, 13, 8),     # hopping: buckets [5, 10) and [10, 15)
        (10, 5, 20, 10),
        (10, 2, 101, 9),    # buckets of 2: [92..100] holds 4 full buckets plus 1 event
    ],
)
def test_count_windows(size, hop, n_events, expected_n):
    s = stats.window_initialize(size, hop)
    for i in range(n_events):
        s = stats.window_agg(s, _ev(winner=i % 2 == 0, cost=float(i)))
    assert stats.window_result(s)["n"] == expected_n


def test_count_window_sees_only_recent_events():
    s = stats.window_initialize(4, 2)
    for i in range(10):
        s = stats.window_agg(s, _ev(winner=i >= 6, conf=i / 10))
    r = stats.window_result(s)
    assert r["n"] == 4 and r["win_rate"] == 1.0  # events 6..9 only
    assert r["mean_confidence"] == pytest.approx(0.75)


def test_time_window_expires_and_ignores_late_events():
    s = stats.window_initialize(1000, 500, by="time")
    s = stats.window_agg(s, _ev(ts=100))
    s = stats.window_agg(s, _ev(ts=900))
    assert stats.window_result(s)["n"] == 2
    s = stats.window_agg(s, _ev(ts=1600))  # bucket 3 keeps bucket 2 only (empty) and itself
    assert stats.window_result(s)["n"] == 1
    s = stats.window_agg(s, _ev(ts=50))  # far older than the window: dropped
    assert stats.window_result(s)["n"] == 1
    assert stats.window_result(s, now=5000)["n"] == 0


@pytest.mark.parametrize(("size", "hop", "by"), [(10, 3, "count"), (0, 1, "count"), (10, 5, "rows")])
def test_bad_window(size, hop, by):
    with pytest.raises(ValidationError):
        stats.window_initialize(size, hop, by)


def test_time_window_needs_ts():
    with pytest.raises(ValidationError):
        stats.window_agg(stats.window_initialize(10, by="time"), {"winner": True})


def test_key_roundtrip_with_slashes():
    assert stats.parse_key(stats.key("meta/llama-2|x", 7)) == ("meta/llama-2|x", 7)


_events = st.lists(
    st.builds(_ev, st.booleans(), st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.1),
              st.sampled_from(["a", "b/c"]), st.integers(0, 2), st.integers(0, 10_000)),
    max_size=60)


@given(_events)
def test_table_matches_direct_count_and_survives_json(events):
    # A Faust table recovers its state from the changelog as JSON; the result must not change.
    table = stats.fold(events)
    restored = json.loads(json.dumps(table))
    assert stats.table_result(restored) == stats.table_result(table)
    for k, r in stats.table_result(table).items():
        model, domain = stats.parse_key(k)
        mine = [e for e in events if e["model"] == model and e["domain"] == domain]
        assert r["n"] == len(mine)
        assert r["wins"] == sum(e["winner"] for e in mine)
        assert r["mean_cost"] == pytest.approx(sum(e["cost_usd"] for e in mine) / len(mine))


@given(_events, st.integers(1, 5), st.integers(1, 4))
def test_count_window_equals_tail(events, buckets, hop):
    size = buckets * hop
    s = stats.window_initialize(size, hop)
    for e in events:
        s = stats.window_agg(s, e)
    # The window holds the events of the last `buckets` hop-aligned buckets.
    start = max(0, (len(events) - 1) // hop - buckets + 1) * hop if events else 0
    tail = events[start:]
    r = stats.window_result(json.loads(json.dumps(s)))
    assert r["n"] == len(tail)
    assert r["wins"] == sum(e["winner"] for e in tail)
