"""The evolution fold: contested scores -> statistics -> promotions; delivered answers -> gaps -> spawns."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import hierarchy as hier
from selfevolve.evolution import stats
from selfevolve.flow.evolution import DomainGaps, DomainStats, EvolutionFold, EvolutionState
from selfevolve.flow.events import Event
from selfevolve.models.catalogue import Catalogue, ModelSpec
from streams.evolution_agent import EvolutionHost

CATALOGUE = Catalogue([
    ModelSpec("sup", "replay", "supervisor", 3, cost_per_call=0.01),
    ModelSpec("teacher-a", "replay", "teacher", 2, cost_per_call=0.003),
    ModelSpec("teacher-b", "replay", "teacher", 2, cost_per_call=0.003),
    ModelSpec("ta1", "replay", "ta", 1, cost_per_call=0.0005),
    ModelSpec("stu", "replay", "student", 0, cost_per_call=0.0001),
    ModelSpec("res-local", "local", "student", 0, cost_per_call=0.00001, reserve=True),
    ModelSpec("res-dear", "replay", "student", 0, cost_per_call=0.0002, reserve=True),
    ModelSpec("res-cheap", "replay", "student", 0, cost_per_call=0.00005, reserve=True),
])
# Gap window of 4 delivered answers, checked after each once 2 are in.
GAPPY = dict(window_size=4, gap_confidence=0.9, max_models_per_domain=12)


def _fold(**overrides) -> EvolutionFold:
    return EvolutionFold(Settings(**overrides), CATALOGUE)


def score(model: str, domain: int = 2, winner: bool = True, contested: bool = True, confidence: float = 0.95,
          correctness: float = 0.9, composite: float = 0.9, ts: int = 1) -> Event:
    return Event("score", {"version": 3, "query_id": f"q{ts}", "tenant": "default", "model": model,
                           "relevance": 0.9, "correctness": correctness, "completeness": 0.8, "clarity": 0.9,
                           "composite": composite, "confidence": confidence, "winner": winner, "domain": domain,
                           "cost_usd": 0.001, "contested": contested, "ts_ms": ts})


def run(fold: EvolutionFold, events, state: EvolutionState | None = None):
    state = fold.initialize() if state is None else state
    outs = []
    for e in events:
        state, o = fold.step(state, e)
        outs += o
    return state, outs


def kinds(outs) -> list[tuple]:
    return [(o.kind, o.stage, o.key) for o in outs]


# --- statistics and promotion ---------------------------------------------------------------------------

def test_contested_scores_promote_one_step_at_a_time_at_the_scores_event_time():
    fold = _fold(promote_min_n=3)
    events = [score("stu", contested=False, ts=1)] + [score("stu", ts=t) for t in (10, 20, 30, 40)]
    state, outs = run(fold, events)
    assert [(o.record["old_role"], o.record["new_role"], o.record["ts_ms"]) for o in outs] == [
        ("student", "ta", 30), ("ta", "teacher", 40)]
    assert kinds(outs) == [("model_event", "model-events", "stu")] * 2
    assert hier.role(state.hierarchy, "stu", 2) == "teacher"
    # The uncontested score is in no table: a model called alone always "wins".
    assert state.stats[2].alltime == stats.fold([e.record for e in events[1:]])
    assert stats.window_result(state.stats[2].window[stats.key("stu", 2)])["n"] == 4


def test_own_model_events_read_back_change_nothing_but_others_apply():
    fold = _fold(promote_min_n=3)
    state, outs = run(fold, [score("stu", ts=t) for t in (10, 20, 30, 40)])
    # The first promotion's copy arrives after the second promotion: it must not set stu back to ta.
    state, none = fold.step(state, Event("model_event", outs[0].record))
    assert none == [] and hier.role(state.hierarchy, "stu", 2) == "teacher"
    state, _ = fold.step(state, Event("model_event", outs[1].record))
    assert state.echoes == ()
    other = hier.event("demote", "stu", 2, "teacher", "ta", "operator", 50)
    state, _ = fold.step(state, Event("model_event", other))
    assert hier.role(state.hierarchy, "stu", 2) == "ta"


def test_a_model_event_it_cannot_apply_raises_and_changes_nothing():
    fold = _fold()
    state = fold.initialize()
    before = json.dumps(state.to_json())
    with pytest.raises(ValidationError):
        fold.step(state, Event("model_event", {**hier.event("promote", "stu", 1, "student", "ta"), "kind": "x"}))
    assert json.dumps(state.to_json()) == before


# --- gaps and spawning ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("scores", "gap"), [
    # Confident answers the scorer judged wrong (no gold): failure rate 1 > 0.3.
    ([dict(correctness=0.2)] * 2, True),
    ([dict(correctness=0.8)] * 2, False),
    # Only the delivered (winning) answer counts: a losing weak answer is no failure of the domain.
    ([dict(correctness=0.2, winner=False)] * 4 + [dict()] * 2, False),
    ([dict(confidence=0.3)] * 2, True),  # mean confidence < θgap
])
def test_a_gap_opens_on_the_scorers_no_gold_verdict_of_the_delivered_answer(scores, gap):
    fold = _fold(window_size=4, max_models_per_domain=12)
    _, outs = run(fold, [score("sup", ts=i + 1, **kw) for i, kw in enumerate(scores)])
    gaps = [o for o in outs if o.kind == "gap"]
    assert [(o.record["kind"], o.key, o.stage) for o in gaps] == ([("open", "2", "gaps")] if gap else [])


def _weak_domain(teacher_quality: dict[str, float], domain: int = 3) -> list[Event]:
    """Head-to-head scores of the two teachers in `domain`, then delivered answers weak enough to open a gap."""
    out = [score(m, domain, winner=False, composite=q, ts=i + 1)
           for i, (m, q) in enumerate(sorted(teacher_quality.items()))]
    return out + [score("sup", domain, contested=False, confidence=0.1, ts=100 + i) for i in range(2)]


@pytest.mark.parametrize(("quality", "teacher"), [
    ({"teacher-a": 0.2, "teacher-b": 0.9}, "teacher-b"),
    ({"teacher-a": 0.9, "teacher-b": 0.2}, "teacher-a"),
])
def test_the_spawn_names_the_teacher_with_the_best_real_statistics_in_the_domain(quality, teacher):
    """Production passed the spawner `{}` for statistics: it then always named teacher-a (name order)."""
    state, outs = run(_fold(**GAPPY), _weak_domain(quality))
    (spawn,) = [o for o in outs if o.kind == "spawn"]
    assert (spawn.record["teacher"], spawn.record["domain"], spawn.key, spawn.stage) == (teacher, 3, "3", "spawns")
    assert spawn.record["ts_ms"] == 101  # the gap's, which is the score's that opened it


@pytest.mark.parametrize(("backends", "activated"), [
    (("replay",), "res-cheap"),            # the local model is cheaper, but no spawn may use its backend
    (("replay", "local"), "res-local"),    # cheapest first among those allowed
    (("openai",), None),                   # nothing a spawn may use: no spawn at all in replay mode
])
def test_replay_spawns_activate_the_cheapest_reserve_model_of_an_allowed_backend(backends, activated):
    state, outs = run(_fold(spawn_backends=backends, **GAPPY), _weak_domain({"teacher-a": 0.5, "teacher-b": 0.5}))
    acts = [o.record for o in outs if o.kind == "model_event"]
    assert [(a["kind"], a["model"], a["domain"], a["new_role"]) for a in acts] == (
        [("activate", activated, 3, "student")] if activated else [])
    assert len([o for o in outs if o.kind == "spawn"]) == (1 if activated else 0)
    if activated:
        assert hier.role(state.hierarchy, activated, 3) == "student" and state.gaps[3].pending


def test_one_spawn_per_open_gap_until_it_closes():
    fold = _fold(**GAPPY)
    weak = [score("sup", 4, contested=False, confidence=0.1, ts=i) for i in range(1, 6)]
    strong = [score("sup", 4, contested=False, confidence=0.99, ts=i) for i in range(6, 12)]
    state, outs = run(fold, weak + strong + weak)
    assert [(o.kind, o.record.get("kind")) for o in outs if o.kind in ("gap", "spawn")] == [
        ("gap", "open"), ("spawn", None), ("gap", "close"), ("gap", "open"), ("spawn", None)]
    assert state.gaps[4].spawned == 2 and state.gaps[4].window.opened == 2


# --- determinism, purity, restarts ----------------------------------------------------------------------

MODELS = ("sup", "teacher-a", "teacher-b", "ta1", "stu")
_scores = st.builds(
    lambda m, d, w, c, conf, corr, comp: ("score", dict(model=m, domain=d, winner=w, contested=c, confidence=conf,
                                                        correctness=corr, composite=comp)),
    st.sampled_from(MODELS), st.integers(0, 2), st.booleans(), st.booleans(), st.floats(0, 1), st.floats(0, 1),
    st.floats(0, 1))
_foreign = st.builds(lambda m, d, r: ("model_event", hier.event("promote", m, d, None, r, "operator")),
                     st.sampled_from(MODELS), st.integers(0, 2), st.sampled_from(hier.ROLES[:3]))
_streams = st.lists(st.one_of(_scores, _scores, _scores, _foreign), max_size=60)


def _events(spec) -> list[Event]:
    return [score(ts=i, **kw) if kind == "score" else Event(kind, kw) for i, (kind, kw) in enumerate(spec)]


def _json(state: EvolutionState) -> str:
    return json.dumps(state.to_json(), sort_keys=True)


SMALL = dict(promote_min_n=3, promote_min_confidence=0.3, promote_min_winrate=0.5, **GAPPY)


@hsettings(max_examples=60, deadline=None)
@given(_streams)
def test_the_same_events_give_the_same_outputs_and_a_step_never_changes_its_input(spec):
    fold = _fold(**SMALL)
    first = run(fold, _events(spec))
    second = run(_fold(**SMALL), _events(spec))
    assert [(o.kind, o.record, o.key, o.stage) for o in first[1]] == [(o.kind, o.record, o.key, o.stage)
                                                                      for o in second[1]]
    assert _json(first[0]) == _json(second[0])
    state = fold.initialize()
    for e in _events(spec):
        before = _json(state)
        after, _ = fold.step(state, e)
        assert _json(state) == before
        state = after


@hsettings(max_examples=40, deadline=None)
@given(_streams, st.integers(0, 60))
def test_a_state_restored_from_its_json_continues_as_if_never_stopped(spec, cut):
    fold = _fold(**SMALL)
    events = _events(spec)
    whole = run(fold, events)
    head = run(fold, events[:cut])
    restored = EvolutionState.from_json(json.loads(json.dumps(head[0].to_json())))
    tail = run(fold, events[cut:], restored)
    assert [o.record for o in head[1] + tail[1]] == [o.record for o in whole[1]]
    assert _json(tail[0]) == _json(whole[0])


@hsettings(max_examples=40, deadline=None)
@given(_streams, st.sets(st.integers(0, 59)))
def test_the_history_host_with_per_domain_tables_gives_the_folds_outputs_and_skips_redeliveries(spec, again):
    """streams/evolution_agent.py's host: domain parts in two once-tables, the global part in memory, the model events
    read back through the followers; a score delivered twice (same position) is folded once."""
    fold = _fold(**SMALL)
    final, expected = run(fold, _events(spec))
    host, tables, got = EvolutionHost(_fold(**SMALL)), ({}, {}), []
    for i, e in enumerate(_events(spec)):
        if e.kind == "model_event":
            host.follow(e)
            continue
        for _ in range(2 if i in again else 1):
            d = str(e.record["domain"])
            outs, s_part, g_part = host.score(e.record, tables[0].get(d), tables[1].get(d), (0, i))
            got += outs
            for table, part in zip(tables, (s_part, g_part)):
                if part is not None:
                    table[d] = {"at": [0, i], "value": part.to_json()}
            for o in outs:  # read back from the topic later, as the followers do
                if o.kind == "model_event":
                    host.follow(Event("model_event", o.record))
    assert [(o.kind, o.record) for o in got] == [(o.kind, o.record) for o in expected]
    assert {d: v["value"] for d, v in tables[0].items()} == {str(d): p.to_json() for d, p in final.stats.items()}
    assert {d: v["value"] for d, v in tables[1].items()} == {str(d): p.to_json() for d, p in final.gaps.items()}
    assert host.state.hierarchy == final.hierarchy


def test_parts_round_trip_through_json():
    state, _ = run(_fold(**SMALL), _weak_domain({"teacher-a": 0.2, "teacher-b": 0.9}))
    for part in (state.stats[3], state.gaps[3]):
        assert type(part).from_json(json.loads(json.dumps(part.to_json()))) == part
    with pytest.raises(ValidationError):
        DomainStats.from_json({"alltime": {}})
    with pytest.raises(ValidationError):
        DomainGaps.from_json({"confidence": []})
