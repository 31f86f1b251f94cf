"""The meta-learner fold: a cadence of answers (never of time), verdicts over composites, θ from strategy events."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import metalearn
from selfevolve.flow.events import Event
from selfevolve.flow.metalearner import MetaLearnerFold, MetaLearnerState, rows, supervisor_price
from selfevolve.models.catalogue import Catalogue, ModelSpec

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Catalogue([
    ModelSpec("sup", "replay", "supervisor", 3, cost_per_call=0.01),
    ModelSpec("sup-reserve", "replay", "supervisor", 3, cost_per_call=0.5, reserve=True),
    ModelSpec("cheap", "replay", "student", 0, cost_per_call=0.0001),
    ModelSpec("mid", "replay", "ta", 1, cost_per_call=0.001),
])
# Tuning needs 20 answers of each of two strategies: every 40 answers, over the last 40, quality only.
EVERY40 = dict(metalearn_every=40, metalearn_window=40, cost_lambda=0.0)


def _fold(**overrides) -> MetaLearnerFold:
    return MetaLearnerFold(Settings(**overrides), CATALOGUE)


def answer(i: int, strategy: str, composite: float, model: str = "", ts: int | None = None, domain: int = 0,
           tenant: str = "t", cost: float = 0.001) -> Event:
    model = model or ("cheap" if strategy == "targeted" else "mid")
    return Event("answer", {"version": 1, "query_id": f"q{i}", "tenant": tenant, "model": model, "answer": "a",
                            "composite": composite, "cost_usd": cost, "strategy": strategy, "models_called": [model],
                            "fallbacks": [], "domain": domain, "latency_ms": 1.0, "ts_ms": i if ts is None else ts})


def verdict(i: int, model: str, quality: float, tenant: str = "t") -> Event:
    return Event("feedback", {"version": 2, "query_id": f"q{i}", "model": model, "tenant": tenant,
                              "quality": quality, "source": "gold", "ts_ms": 10_000 + i})


def run(fold: MetaLearnerFold, events, state: MetaLearnerState | None = None):
    state = fold.initialize() if state is None else state
    outs = []
    for e in events:
        state, o = fold.step(state, e)
        outs += o
    return state, outs


def _mixed(n: int, ts=None) -> list[Event]:
    """Alternating targeted (composite 0.9) and parallel (0.5) answers."""
    return [answer(i, "targeted" if i % 2 else "parallel", 0.9 if i % 2 else 0.5, ts=None if ts is None else ts[i])
            for i in range(n)]


# --- cadence ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "ticks"), [(39, []), (40, [39]), (79, [39]), (80, [39, 79]), (125, [39, 79, 119])])
def test_thresholds_move_every_metalearn_every_answers(n, ticks):
    state, outs = run(_fold(**EVERY40), _mixed(n))
    assert [o.record["ts_ms"] for o in outs] == ticks  # each change carries its answer's time
    assert [(o.kind, o.key, o.stage) for o in outs] == [("strategy", "global", "strategy")] * len(ticks)
    assert state.answers == n and len(state.window) == min(n, 40)
    # targeted as good for less: θh falls by δ each round
    assert state.theta_high == pytest.approx(0.80 - 0.02 * len(ticks)) and state.theta_low == 0.50


@hsettings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-10**12, 10**12), min_size=130, max_size=130))
def test_the_cadence_counts_answers_whatever_their_timestamps(stamps):
    _, outs = run(_fold(**EVERY40), _mixed(130, ts=stamps))
    _, plain = run(_fold(**EVERY40), _mixed(130))
    assert [(o.record["theta_high"], o.record["theta_low"]) for o in outs] == [
        (o.record["theta_high"], o.record["theta_low"]) for o in plain]
    assert [o.record["ts_ms"] for o in outs] == [stamps[39], stamps[79], stamps[119]]


def test_an_answer_read_again_is_not_counted_again():
    events = _mixed(39)
    state, outs = run(_fold(**EVERY40), events + events[-5:])
    assert state.answers == 39 and outs == []


def test_the_window_is_the_last_metalearn_window_answers():
    # 40 old answers say parallel is better, the last 40 say targeted: only the last 40 count.
    old = [answer(i, "targeted" if i % 2 else "parallel", 0.1 if i % 2 else 0.9) for i in range(40)]
    new = [answer(40 + i, "targeted" if i % 2 else "parallel", 0.9 if i % 2 else 0.5) for i in range(40)]
    state, outs = run(_fold(**{**EVERY40, "metalearn_every": 80}), old + new)
    assert [o.record["reason"].split()[0] for o in outs] == ["best=targeted"]
    state, outs = run(_fold(**{**EVERY40, "metalearn_every": 80, "metalearn_window": 80}), old + new)
    assert [o.record["reason"].split()[0] for o in outs] == ["best=parallel"]


# --- quality: the verdict on the answering model, else the composite -------------------------------------

@pytest.mark.parametrize(("case", "best"), [
    ("none", "targeted"),        # composites: targeted 0.9, parallel 0.5
    ("answering", "parallel"),   # verdicts on the answering models say the opposite, and win
    ("bystander", "targeted"),   # verdicts on a model that did not answer change nothing
])
def test_a_verdict_on_the_answering_model_replaces_its_composite(case, best):
    events = _mixed(39)
    if case != "none":
        for i, e in enumerate(list(events)):
            model = e.record["model"] if case == "answering" else "sup"
            events.append(verdict(i, model, 0.0 if e.record["strategy"] == "targeted" else 1.0))
    events.append(_mixed(40)[39])
    _, (out,) = run(_fold(**EVERY40), events)
    assert out.record["reason"].startswith(f"best={best}")


def test_the_latest_verdict_counts_and_one_for_another_tenant_does_not():
    state, _ = run(_fold(**EVERY40), [answer(1, "targeted", 0.9), verdict(1, "cheap", 0.0), verdict(1, "cheap", 0.7),
                                      verdict(1, "cheap", 0.1, tenant="other")])
    (entry,) = state.window
    assert entry.verdict == 0.7 and entry.quality == 0.7
    assert rows(state.window) == [{"strategy": "targeted", "domain": 0, "n": 1, "quality": 0.7, "cost": 0.001}]


# --- thresholds from strategy events ---------------------------------------------------------------------

def test_strategy_events_set_theta_except_the_copies_of_its_own():
    fold = _fold(**EVERY40)
    state, outs = run(fold, _mixed(80))
    assert (state.theta_high, state.theta_low) == (0.76, 0.50)
    # The first change read back after the second: it must not set θh back to 0.78.
    state, _ = run(fold, [Event("strategy", o.record) for o in outs], state)
    assert (state.theta_high, state.theta_low, state.echoes) == (0.76, 0.50, ())
    other = {"version": 1, "theta_high": 0.9, "theta_low": 0.3, "domain": -1, "reason": "operator", "ts_ms": 5}
    state, _ = fold.step(state, Event("strategy", other))
    assert (state.theta_high, state.theta_low) == (0.9, 0.3)
    state, _ = fold.step(state, Event("strategy", {**other, "theta_high": 0.5, "domain": 2}))
    assert state.theta_high == 0.9  # a per-domain pair is not the global one


@pytest.mark.parametrize(("high", "low"), [(0.5, 0.5), (1.2, 0.3), (0.5, -0.1)])
def test_thresholds_tuning_cannot_start_from_are_refused(high, low):
    fold = _fold()
    state = fold.initialize()
    with pytest.raises(ValidationError):
        fold.step(state, Event("strategy", {"theta_high": high, "theta_low": low, "domain": -1}))


def test_cost_is_priced_against_the_dearest_active_supervisor():
    assert supervisor_price(CATALOGUE) == 0.01
    # Targeted 0.2 worse for $0.004 less: at λ=1 against $0.01 that saving is worth 0.4, so targeted wins.
    events = [answer(i, "targeted" if i % 2 else "parallel", 0.7 if i % 2 else 0.9, cost=0.001 if i % 2 else 0.005)
              for i in range(40)]
    _, (out,) = run(_fold(**{**EVERY40, "cost_lambda": 1.0}), events)
    assert out.record["reason"].startswith("best=targeted")
    _, (out,) = run(MetaLearnerFold(Settings(**{**EVERY40, "cost_lambda": 1.0}), Catalogue(
        [replace(s, cost_per_call=0.1) if s.name == "sup" else s for s in CATALOGUE.models])), events)
    assert out.record["reason"].startswith("best=parallel")


# --- determinism and restarts ----------------------------------------------------------------------------

_event = st.one_of(
    st.builds(lambda i, s, c, d: answer(i, s, c, domain=d), st.integers(0, 60), st.sampled_from(metalearn.STRATEGIES),
              st.floats(0, 1), st.integers(0, 2)),
    st.builds(lambda i, m, q: verdict(i, m, q), st.integers(0, 60), st.sampled_from(("cheap", "mid")), st.floats(0, 1)),
)


@hsettings(max_examples=50, deadline=None)
@given(st.lists(_event, max_size=150), st.integers(0, 150))
def test_the_same_events_give_the_same_outputs_also_across_a_restart(events, cut):
    settings = dict(metalearn_every=7, metalearn_window=30)
    fold = _fold(**settings)
    whole = run(fold, events)
    again = run(_fold(**settings), events)
    assert [o.record for o in whole[1]] == [o.record for o in again[1]]
    head = run(fold, events[:cut])
    restored = MetaLearnerState.from_json(json.loads(json.dumps(head[0].to_json())))
    tail = run(fold, events[cut:], restored)
    assert [o.record for o in head[1] + tail[1]] == [o.record for o in whole[1]]
    assert tail[0] == whole[0]


# --- the history store agrees: STRATEGY_SQL for people, the window a restart restores -------------------

class _Chdb:
    """HistoryStore.query's shape over a chdb session."""

    def __init__(self, sess) -> None:
        self.sess = sess

    def query(self, sql: str):
        out = json.loads(self.sess.query(sql, "JSONCompact").bytes() or b'{"meta": [], "data": []}')
        return [m["name"] for m in out["meta"]], [tuple(r) for r in out["data"]]


@pytest.fixture
def store():
    chdb_session = pytest.importorskip("chdb.session")
    from streams.store import ddl_statements

    sess = chdb_session.Session()
    for s in ddl_statements((ROOT / "infra" / "clickhouse" / "ddl.sql").read_text()):
        sess.query(s)
    yield _Chdb(sess)
    sess.close()


def _insert(store, e: Event) -> None:
    r = e.record
    if e.kind == "answer":
        store.sess.query(f"INSERT INTO selfevolve.answers (query_id, tenant, model, answer, composite, cost_usd, "
                         f"strategy, domain, latency_ms, ts_ms) VALUES ('{r['query_id']}', '{r['tenant']}', "
                         f"'{r['model']}', 'a', {r['composite']}, {r['cost_usd']}, '{r['strategy']}', {r['domain']}, "
                         f"1.0, {r['ts_ms']})")
    else:
        store.sess.query(f"INSERT INTO selfevolve.feedback (query_id, tenant, model, quality, ts_ms) VALUES "
                         f"('{r['query_id']}', '{r['tenant']}', '{r['model']}', {r['quality']}, {r['ts_ms']})")


def test_a_restart_restores_the_window_and_the_count_from_the_store(store):
    from streams.metalearner import MetaLearnerHost

    settings = dict(metalearn_every=7, metalearn_window=10)
    events = [answer(i, ("targeted", "hybrid", "parallel")[i % 3], i / 20, domain=i % 2) for i in range(15)]
    events += [verdict(3, "mid", 1.0), verdict(12, "cheap", 0.25), verdict(12, "cheap", 0.5), verdict(13, "cheap", 1.0)]
    for e in events:
        _insert(store, e)
    live, _ = run(_fold(**settings), events)
    host = MetaLearnerHost(_fold(**settings))
    host.restore(host.read(store))
    assert host.state.window == live.window and host.state.answers == live.answers == 15
    # The user-facing query computes what the fold tunes on, over the same answers and verdicts.
    _, sql_rows = store.query(metalearn.STRATEGY_SQL.replace("{since_ms:Int64}", "5"))
    got = sorted((s, int(d), int(n), round(q, 9), round(c, 9)) for s, d, n, q, c in sql_rows)
    assert got == sorted((r["strategy"], r["domain"], r["n"], round(r["quality"], 9), round(r["cost"], 9))
                         for r in rows(live.window))


def test_a_restart_takes_the_stored_thresholds_unless_the_topic_gave_newer_ones(store):
    from streams.metalearner import MetaLearnerHost

    store.sess.query("INSERT INTO selfevolve.strategies (theta_high, theta_low, ts_ms) VALUES (0.7, 0.4, 1), "
                     "(0.74, 0.46, 2)")
    host = MetaLearnerHost(_fold())
    host.restore(host.read(store))
    assert (host.state.theta_high, host.state.theta_low) == (0.74, 0.46)
    host = MetaLearnerHost(_fold())
    host.follow(Event("strategy", {"theta_high": 0.9, "theta_low": 0.2, "domain": -1}))
    host.restore(host.read(store))
    assert (host.state.theta_high, host.state.theta_low) == (0.9, 0.2)
    store.sess.query("INSERT INTO selfevolve.strategies (theta_high, theta_low, ts_ms) VALUES (1.5, 0.4, 3)")
    host = MetaLearnerHost(_fold())
    host.restore(host.read(store))  # thresholds tuning cannot start from: the defaults stay, the sink starts
    assert (host.state.theta_high, host.state.theta_low) == (0.8, 0.5)
