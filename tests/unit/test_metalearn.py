"""Unit tests for threshold meta-learning and the example SQL, run on chdb against the real DDL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.evolution import metalearn
from selfevolve.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]


def _row(strategy, quality, cost, n=50, domain=0):
    return {"strategy": strategy, "domain": domain, "n": n, "quality": quality, "cost": cost}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # Targeted nearly as good and far cheaper: lower θh so more queries go targeted.
        ([_row("targeted", 0.80, 0.001), _row("parallel", 0.85, 0.01)], (0.78, 0.50)),
        # Parallel much better for its cost: raise θl.
        ([_row("targeted", 0.40, 0.001), _row("parallel", 0.95, 0.002)], (0.80, 0.52)),
        # Hybrid best: widen the hybrid band.
        ([_row("targeted", 0.5, 0.001), _row("hybrid", 0.9, 0.002), _row("parallel", 0.9, 0.01)],
         (0.82, 0.48)),
        # Too few answers to judge: hold.
        ([_row("targeted", 0.9, 0.0, n=5), _row("parallel", 0.1, 0.01, n=5)], (0.80, 0.50)),
        ([], (0.80, 0.50)),
        # One strategy alone has nothing to beat: hold rather than drift.
        ([_row("hybrid", 0.9, 0.002)], (0.80, 0.50)),
        ([_row("hybrid", 0.9, 0.002), _row("targeted", 0.1, 0.0, n=19)], (0.80, 0.50)),
    ],
)
def test_tune(rows, expected):
    ev = metalearn.tune(rows, 0.80, 0.50, lam=1.0, delta=0.02, ts_ms=5)
    assert (ev["theta_high"], ev["theta_low"]) == pytest.approx(expected)
    assert set(ev) == {"version", "theta_high", "theta_low", "domain", "reason", "ts_ms"}
    assert ev["ts_ms"] == 5


def test_lambda_trades_quality_for_cost():
    rows = [_row("targeted", 0.70, 0.001), _row("parallel", 0.90, 0.010)]
    assert metalearn.tune(rows, 0.8, 0.5, lam=0.0)["reason"].startswith("best=parallel")
    assert metalearn.tune(rows, 0.8, 0.5, lam=1.0)["reason"].startswith("best=targeted")


def test_cost_scale_sets_the_exchange_rate():
    rows = [_row("targeted", 0.70, 0.001), _row("parallel", 0.90, 0.010)]
    # Against a $0.10 reference the $0.009 difference is worth 0.09 < 0.2 of quality.
    assert metalearn.tune(rows, 0.8, 0.5, cost_scale=0.1)["reason"].startswith("best=parallel")
    assert metalearn.tune(rows, 0.8, 0.5, cost_scale=0.01)["reason"].startswith("best=targeted")


def test_per_domain_rows():
    rows = [_row("targeted", 0.9, 0.001, domain=1), _row("parallel", 0.5, 0.01, domain=1),
            _row("targeted", 0.1, 0.001, domain=2), _row("parallel", 0.99, 0.001, domain=2)]
    assert metalearn.tune(rows, 0.8, 0.5, domain=1)["theta_high"] == pytest.approx(0.78)
    ev = metalearn.tune(rows, 0.8, 0.5, domain=2)
    assert ev["theta_low"] == pytest.approx(0.52) and ev["domain"] == 2
    pooled = metalearn.pool(rows)
    assert pooled["targeted"]["n"] == 100 and pooled["targeted"]["quality"] == pytest.approx(0.5)


def test_rejects_bad_thresholds():
    with pytest.raises(ValidationError):
        metalearn.tune([], 0.5, 0.5)
    with pytest.raises(ValidationError):
        metalearn.nudge("random", 0.8, 0.5, 0.02)


_hi_lo = st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda t: t[1] < t[0] and t[0] - t[1] >= 0.05)


@given(st.lists(st.sampled_from(metalearn.STRATEGIES), max_size=60), _hi_lo, st.floats(0.001, 0.2))
def test_thresholds_stay_ordered_and_clamped(bests, hi_lo, delta):
    hi, lo = hi_lo
    for b in bests:
        hi, lo = metalearn.nudge(b, hi, lo, delta)
        assert 0.0 <= lo < hi <= 1.0


def test_replay_gives_same_thresholds():
    rows = [_row("targeted", 0.8, 0.001), _row("hybrid", 0.82, 0.004), _row("parallel", 0.9, 0.01)]
    runs = []
    for _ in range(2):
        hi, lo, trail = 0.8, 0.5, []
        for i in range(10):
            ev = metalearn.tune(rows, hi, lo, ts_ms=i)
            hi, lo = ev["theta_high"], ev["theta_low"]
            trail.append(ev)
        runs.append(json.dumps(trail))
    assert runs[0] == runs[1]


# --- SQL on chdb, against infra/clickhouse/ddl.sql --------------------------------------------

def _statements(text: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def examples() -> dict[str, str]:
    """name -> SQL from examples.sql (the `-- name:` format a CLI lists)."""
    text = (ROOT / "infra" / "clickhouse" / "examples.sql").read_text()
    out = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        (sql,) = _statements(body)
        out[name.strip()] = sql
    return out


@pytest.fixture(scope="module")
def store():
    chdb_session = pytest.importorskip("chdb.session")
    sess = chdb_session.Session()
    for s in _statements((ROOT / "infra" / "clickhouse" / "ddl.sql").read_text()):
        sess.query(s)
    rows = [("q1", "m1", 0.9, 0.010, "parallel", 1), ("q2", "m2", 0.6, 0.001, "targeted", 1),
            ("q3", "m2", 0.7, 0.001, "targeted", 1), ("q4", "m1", 0.8, 0.020, "parallel", 2)]
    for qid, model, comp, cost, strat, dom in rows:
        sess.query(f"INSERT INTO selfevolve.answers (query_id, tenant, model, answer, composite, "
                   f"cost_usd, strategy, domain, latency_ms, ts_ms) VALUES ('{qid}', 't', '{model}', "
                   f"'a', {comp}, {cost}, '{strat}', {dom}, 1.0, 1700000000000)")
    # A re-delivered answer must be counted once (FINAL), and feedback overrides the composite.
    sess.query("INSERT INTO selfevolve.answers (query_id, tenant, model, answer, composite, cost_usd, "
               "strategy, domain, latency_ms, ts_ms) VALUES ('q1', 't', 'm1', 'a', 0.9, 0.010, "
               "'parallel', 1, 1.0, 1700000000000)")
    # Feedback joins its answer on (tenant, query_id, model); another tenant's verdict on q2 is not q2's.
    sess.query("INSERT INTO selfevolve.feedback (query_id, tenant, model, quality, ts_ms) "
               "VALUES ('q2', 't', 'm2', 0.0, 1700000001000), ('q3', 'other', 'm2', 0.0, 1700000001000)")
    sess.query("INSERT INTO selfevolve.model_events (model, kind, domain, old_role, new_role, ts_ms) "
               "VALUES ('m2', 'promote', 1, 'student', 'ta', 1700000002000)")
    yield sess
    sess.close()


def test_strategy_sql_feeds_tune(store):
    out = json.loads(store.query(metalearn.STRATEGY_SQL, "JSON", params={"since_ms": "0"}).bytes())
    rows = {(r["strategy"], r["domain"]): r for r in out["data"]}
    assert rows[("parallel", 1)]["n"] == 1
    assert rows[("targeted", 1)]["n"] == 2
    assert rows[("targeted", 1)]["quality"] == pytest.approx(0.35)  # feedback 0.0 and composite 0.7
    # Quality alone favours parallel (0.9 vs 0.35); at λ=1 its 10x cost makes targeted better.
    assert metalearn.tune(out["data"], 0.8, 0.5, lam=0.0, min_n=1, domain=1)["reason"].startswith(
        "best=parallel")
    assert metalearn.tune(out["data"], 0.8, 0.5, min_n=1, domain=1)["reason"].startswith(
        "best=targeted")
    later = json.loads(store.query(metalearn.STRATEGY_SQL, "JSON",
                                   params={"since_ms": "1800000000000"}).bytes())
    assert later["data"] == []


EXPECTED = {"strategy_performance", "model_win_rates_hourly", "model_win_rates_by_domain",
            "cost_by_tier_per_day", "cost_by_model_per_day", "promotions_timeline",
            "promotions_per_day", "gaps", "gaps_per_domain", "spawns", "threshold_changes",
            "dead_letters_by_reason"}


def test_examples_are_named():
    assert set(examples()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_example_runs(store, name):
    out = json.loads(store.query(examples()[name], "JSON").bytes() or b'{"data": []}')
    assert isinstance(out["data"], list)
    if name == "promotions_timeline":
        assert [r["kind"] for r in out["data"]] == ["promote"]
    if name == "strategy_performance":
        assert sum(int(r["n"]) for r in out["data"]) == 4
