"""Unit tests for spawn commands and the replay spawner."""

from __future__ import annotations

import pytest

from selfevolve.evolution import hierarchy as hier
from selfevolve.evolution import spawning
from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution.stats import key

S = Settings(max_models_per_domain=4)


def _roster(extra=None, reserve=("r1", "r2")):
    h = hier.from_roles({"sup": "supervisor", "t1": "teacher", "t2": "teacher", **(extra or {})})
    stats = {key("t1", 3): {"mean_quality": 0.6}, key("t2", 3): {"mean_quality": 0.8}}
    return {"hierarchy": h, "reserve": list(reserve), "stats": stats}


def _gap(kind="open", domain=3, priority=0.4, ts=10):
    return {"domain": domain, "kind": kind, "priority": priority, "ts_ms": ts,
            "mean_confidence": 0.3, "failure_rate": 0.5, "traffic": 100}


def test_open_gap_spawns_with_best_teacher():
    state, (cmd,) = spawning.step(spawning.initialize(), _gap(), _roster(), S)
    assert cmd == {"version": 1, "domain": 3, "teacher": "t2", "mode": "replay", "priority": 0.4,
                   "ts_ms": 10}
    assert state["spawned"] == 1 and state["pending"] == [3]


def test_one_spawn_per_open_gap_until_closed():
    state, _ = spawning.step(spawning.initialize(), _gap(), _roster(), S)
    state, again = spawning.step(state, _gap(ts=20), _roster(), S)
    assert again == []
    state, _ = spawning.step(state, _gap("close"), _roster(), S)
    state, cmds = spawning.step(state, _gap(ts=30), _roster(), S)
    assert len(cmds) == 1 and state["spawned"] == 2 and state["by_domain"] == {"3": 2}


@pytest.mark.parametrize(
    ("extra", "reserve", "mode", "spawns"),
    [
        ({}, ("r1",), "replay", 1),                       # 3 members < K=4
        ({"s1": "student"}, ("r1",), "replay", 0),        # 4 members: domain is full
        ({}, (), "replay", 0),                            # nothing left in the reserve
        ({}, (), "live", 1),                              # the trainer makes a new one instead
    ],
)
def test_spawn_conditions(extra, reserve, mode, spawns):
    _, cmds = spawning.step(spawning.initialize(), _gap(), _roster(extra, reserve), S, mode)
    assert len(cmds) == spawns


def test_execute_activates_first_free_reserve_model():
    roster = _roster()
    _, (cmd,) = spawning.step(spawning.initialize(), _gap(), roster, S)
    (ev,) = spawning.execute(cmd, roster)
    assert (ev["kind"], ev["model"], ev["domain"], ev["new_role"]) == ("activate", "r1", 3, "student")
    assert "teacher=t2" in ev["reason"]
    roster["hierarchy"] = hier.apply(roster["hierarchy"], ev)
    (ev2,) = spawning.execute(cmd, roster)
    assert ev2["model"] == "r2"
    assert spawning.execute({**cmd, "mode": "live"}, roster) == []


def test_best_teacher_falls_back_to_supervisor():
    h = hier.from_roles({"sup": "supervisor", "s": "student"})
    assert spawning.best_teacher(h, 0) == "sup"
    assert spawning.best_teacher(hier.from_roles({"s": "student"}), 0) is None


def test_bad_inputs():
    with pytest.raises(ValidationError):
        spawning.step(spawning.initialize(), _gap(), _roster(), S, mode="magic")
    with pytest.raises(ValidationError):
        spawning.step(spawning.initialize(), _gap(kind="maybe"), _roster(), S)
