"""Unit tests for the sink's batching aggregator and its restart contract."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.store import batching


def _feed(items_at: list[tuple[object, float]]) -> batching.Batch:
    state = batching.initialize()
    for item, now in items_at:
        state = batching.agg(state, item, now)
    return state


@pytest.mark.parametrize(
    ("items_at", "now_s", "max_rows", "max_seconds", "expected"),
    [
        ([], 0.0, 1, 0.0, False),  # empty is never ready, even at zero age
        ([], 1e9, 500, 1.0, False),
        ([("a", 0.0)], 0.0, 1, 10.0, True),  # size reached
        ([("a", 0.0)], 0.5, 2, 1.0, False),
        ([("a", 0.0)], 1.0, 2, 1.0, True),  # age reached exactly
        ([("a", 0.0), ("b", 0.9)], 0.95, 3, 1.0, False),
        ([("a", 0.0), ("b", 0.9)], 1.0, 3, 1.0, True),  # age counts from the oldest item
        ([("a", 0.0), ("b", 0.1), ("c", 0.2)], 0.2, 3, 60.0, True),
        ([("a", 5.0), ("b", 5.1)], 5.2, 500, 1.0, False),
    ],
)
def test_ready(items_at, now_s, max_rows, max_seconds, expected):
    assert batching.ready(_feed(items_at), now_s, max_rows, max_seconds) is expected


@pytest.mark.parametrize(
    ("items_at", "max_seconds", "expected"),
    [([], 1.0, None), ([("a", 3.0)], 1.0, 4.0), ([("a", 3.0), ("b", 3.5)], 2.0, 5.0)],
)
def test_deadline(items_at, max_seconds, expected):
    assert batching.deadline(_feed(items_at), max_seconds) == expected


@pytest.mark.parametrize("items", [[], [1], [3, 1, 2], list(range(1000)), [{"k": 1}, None, "x", {"k": 1}]])
def test_result_keeps_arrival_order_and_duplicates(items):
    state = _feed([(item, float(i)) for i, item in enumerate(items)])
    assert batching.result(state) == items
    assert state.size == len(items)


def test_agg_does_not_mutate_earlier_states():
    s0 = batching.initialize()
    s1 = batching.agg(s0, "a", 0.0)
    s2a = batching.agg(s1, "b", 1.0)
    s2b = batching.agg(s1, "c", 1.0)
    assert batching.result(s0) == []
    assert batching.result(s1) == ["a"]
    assert (batching.result(s2a), batching.result(s2b)) == (["a", "b"], ["a", "c"])


def test_invalid_max_rows_rejected():
    with pytest.raises(ValueError):
        batching.ready(batching.initialize(), 0.0, 0, 1.0)


# A stream: item ids with non-negative time gaps between arrivals.
_gaps = st.lists(st.floats(min_value=0.0, max_value=2.0, allow_nan=False), max_size=300)


def _run_sink(gaps: list[float], max_rows: int, max_seconds: float) -> list[list[int]]:
    """The sink loop: check readiness before each arrival (timer tick) and after it."""
    flushes: list[list[int]] = []
    state, now = batching.initialize(), 0.0
    for i, gap in enumerate(gaps):
        now += gap
        if batching.ready(state, now, max_rows, max_seconds):
            flushes.append(batching.result(state))
            state = batching.initialize()
        state = batching.agg(state, i, now)
        if batching.ready(state, now, max_rows, max_seconds):
            flushes.append(batching.result(state))
            state = batching.initialize()
    if state.size:
        flushes.append(batching.result(state))  # shutdown flush
    return flushes


@settings(max_examples=200, deadline=None)
@given(_gaps, st.integers(min_value=1, max_value=50), st.floats(min_value=0.0, max_value=5.0))
def test_no_item_lost_or_duplicated_across_flushes(gaps, max_rows, max_seconds):
    flushes = _run_sink(gaps, max_rows, max_seconds)
    assert [i for f in flushes for i in f] == list(range(len(gaps)))
    assert all(0 < len(f) <= max_rows for f in flushes)


_crash = st.tuples(st.integers(min_value=0, max_value=400), st.sampled_from(["before_insert", "before_commit"]))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=1, max_value=30),
       st.lists(_crash, max_size=4))
def test_crash_and_redelivery_store_each_event_once(n_events, max_rows, crashes):
    """Model of the sink contract: commit after flush, re-deliver from the commit, dedup by key."""
    table: dict[int, int] = {}  # ReplacingMergeTree read with FINAL: one row per key
    inserted = 0
    committed = 0
    for crash in [*crashes, None]:
        state = batching.initialize()
        for offset in range(committed, n_events):
            if crash and crash[1] == "before_insert" and offset >= crash[0]:
                break  # the pending batch and its uncommitted offsets are lost
            state = batching.agg(state, offset, 0.0)
            if batching.ready(state, 0.0, max_rows, 60.0):
                rows = batching.result(state)
                table.update({r: r for r in rows})
                inserted += len(rows)
                if crash and crash[1] == "before_commit" and rows[-1] >= crash[0]:
                    break  # written but not committed: these will be re-delivered
                committed = rows[-1] + 1
                state = batching.initialize()
        else:
            rows = batching.result(state)
            table.update({r: r for r in rows})
            inserted += len(rows)
            committed = n_events
    assert committed == n_events
    assert sorted(table) == list(range(n_events))
    assert inserted >= n_events
