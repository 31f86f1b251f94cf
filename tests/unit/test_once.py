"""Unit tests for exactly-once folds: a redelivered event is recognised by its stored source position."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.wire import once

from selfevolve.evolution import stats


@pytest.mark.parametrize(
    ("entry", "at", "expected"),
    [
        (None, (0, 0), False),                              # a key never seen
        ({"at": None, "value": {}}, (0, 0), False),
        ({"at": [2, 10], "value": {}}, (2, 9), True),       # an older event of the same partition
        ({"at": [2, 10], "value": {}}, (2, 10), True),      # the very event stored last
        ({"at": [2, 10], "value": {}}, (2, 11), False),     # the next one
        ({"at": [2, 10], "value": {}}, (3, 5), False),      # another partition: offsets do not compare
    ],
)
def test_applied(entry, at, expected):
    assert once.applied(entry, at) is expected


def test_value_and_advance_round_trip():
    assert once.value(None, {"empty": True}) == {"empty": True}
    entry = once.advance({"n": 1}, (1, 7))
    assert entry == {"at": [1, 7], "value": {"n": 1}}
    assert once.value(entry, None) == {"n": 1}


def _score(i: int, winner: bool) -> dict:
    return {"model": f"m{i % 3}", "domain": 0, "winner": winner, "confidence": 0.5, "composite": 0.5,
            "cost_usd": 0.001}


@given(st.lists(st.booleans(), min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), max_size=6))
def test_any_at_least_once_schedule_folds_each_event_once(winners, crashes):
    """A consumer that crashes after event `after` and resumes from an earlier committed offset `back`
    (any number of times) ends in the same state as one that saw every event once."""
    events = [_score(i, w) for i, w in enumerate(winners)]
    schedule = list(range(len(events)))
    for after, back in crashes:
        after = min(after, len(events) - 1)
        schedule = schedule[: schedule.index(after) + 1] + list(range(min(back, after), len(events)))
    entry = None
    for offset in schedule:
        if not once.applied(entry, (0, offset)):
            entry = once.advance(stats.table_agg(once.value(entry, {}), events[offset]), (0, offset))
    assert once.value(entry, {}) == stats.fold(events)
