"""The security bench's report: every row has the required keys, totals add up, lost queries are counted."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.security import OUTCOMES, RESULT_KEYS, Result, build_report, lost_and_repeated, result_row


def _results() -> list[Result]:
    return [Result("forged decision", "route-decisions", "refused", "denied", 4, 0),
            Result("sandbox: read /etc/passwd", "checkers.run_code", "succeeded", "ran=True", 0, 0),
            Result("10 MiB gzip query", "queries", "refused", "dead-lettered", 4, 1),
            Result("broken attack", "-", "error", "KeyError: 'x'", 0, 0)]


def test_report_rows_have_every_required_key_and_survive_json():
    report = json.loads(json.dumps(build_report(_results(), {"kafka_security": "sasl"})))
    assert [r["attack"] for r in report["attacks"]] == [r.attack for r in _results()]
    for row in report["attacks"]:
        assert set(row) == set(RESULT_KEYS)
        assert row["outcome"] in OUTCOMES
        assert isinstance(row["valid_queries_sent"], int) and isinstance(row["valid_queries_lost"], int)
    assert report["kafka_security"] == "sasl"


def test_totals_count_outcomes_and_lost_queries():
    totals = build_report(_results(), {})["totals"]
    assert totals == {"refused": 2, "succeeded": 1, "error": 1, "attacks": 4, "valid_queries_sent": 8,
                      "valid_queries_lost": 1}


def test_an_unknown_outcome_is_rejected():
    with pytest.raises(ValueError, match="outcome"):
        result_row(Result("x", "y", "maybe", ""))


def test_long_details_are_cut():
    assert len(result_row(Result("x", "y", "refused", "z" * 10_000))["detail"]) == 2000


def test_lost_and_repeated_per_answer_topic():
    want = {("a", "1"), ("a", "2"), ("b", "1")}
    counts = {"answers": Counter({("a", "1"): 1, ("b", "1"): 2}), "answers.a": Counter({("a", "1"): 1})}
    lost, repeated = lost_and_repeated(counts, want)
    assert lost == {("a", "2")}
    assert repeated == {("b", "1")}
