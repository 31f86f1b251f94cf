"""The evolution benchmark end to end on a small synthetic RouterBench-format stream."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from selfevolve.evolution import hierarchy as hier
from bench import evolution
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role

# model -> (accuracy on alpha, accuracy on beta, USD per call)
MODELS = {"sup": (0.95, 0.6, 0.01), "t1": (0.9, 0.3, 0.004), "s1": (0.6, 0.2, 0.0005),
          "s2": (0.7, 0.3, 0.0008), "r1": (0.9, 0.95, 0.0003), "r2": (0.5, 0.5, 0.0002)}
TASKS = ("alpha", "beta")
DIM = 16


def _write(tmp_path, n_per_file=75, seed=0):
    rng = np.random.default_rng(seed)
    names = list(MODELS)
    header = ["", "sample_id", "prompt", "eval_name", *names, *[f"{m}|model_response" for m in names],
              *[f"{m}|total_cost" for m in names]]
    for split in ("train", "test"):
        for t, task in enumerate(TASKS):
            with open(tmp_path / f"{task}_{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                for i in range(n_per_file):
                    gold = "AB"[int(rng.integers(2))]
                    prompt = (f"{task} question {split} {i} about {task}stuff\nA) yes\nB) no\n"
                              'Print only a single choice from "A" or "B" without explanation. Answer:')
                    right = {m: rng.random() < MODELS[m][t] for m in names}
                    answers = {m: gold if right[m] else "AB"[gold == "A"] for m in names}
                    w.writerow([i, f"{task}-{split}-{i}", repr([prompt]), task,
                                *[float(right[m]) for m in names], *[repr([answers[m]]) for m in names],
                                *[MODELS[m][2] for m in names]])
    return tmp_path


def _fake_embed(settings, prompts):
    # Two well separated task directions plus noise: what MiniLM gives the real tasks, in 16 dims.
    out = []
    for p in prompts:
        rng = np.random.default_rng(sum(map(ord, p)) * 7919 + len(p))
        base = np.eye(DIM)[0 if p.startswith("alpha") else 1]
        v = base + 0.3 * rng.standard_normal(DIM)
        out.append(v / np.linalg.norm(v))
    return np.asarray(out, dtype=np.float32)


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setattr(evolution, "embed_all", _fake_embed)
    return _write(tmp_path)


def _run(data, out, *extra):
    rc = evolution.main(["--data", str(data), "--seed", "3", "--reserve", "r1", "r2", "--k", "6",
                         "--lambda", "0.5", "--radius", "0.8", "--out", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_writes_results_and_plot(data, tmp_path):
    r = _run(data, tmp_path / "res" / "evolution.json")
    assert (tmp_path / "res" / "evolution.png").stat().st_size > 1000
    assert r["queries"] == 300 and r["reserve"] == ["r1", "r2"]
    for name in ("on", "off", "on_fixed_thresholds"):
        w = r[name]["windows"]
        assert [x["queries"] for x in w] == [100, 100, 100]
        assert sum(x["cost_usd"] for x in w) == pytest.approx(r[name]["cost_usd"])
        assert r["comparison"][name]["accuracy"] == pytest.approx(np.mean([x["accuracy"] for x in w]))
    e = r["evolution"]
    assert e["cycles"] == 3
    # The two tasks are found, maybe with a stray split of one, but never mixed in a domain.
    assert 2 <= e["domains"] <= 4 and e["nmi"] > 0.8
    assert all(len(mix) == 1 for mix in e["task_mix_per_domain"].values())
    # Beta is a gap for the starting roster; the spawner fills it from the reserve, cheapest first.
    assert e["gaps"]["opened"] >= 1 and e["students_spawned"] >= 1
    first = next(x for x in e["log"]["model_events"] if x["kind"] == "activate")
    assert first["model"] == "r2" and first["new_role"] == "student"
    assert e["students_spawned"] == e["promotions_by_kind"]["activate"]
    # The evolution-off run never serves a reserve model.
    assert r["off"]["strategies"] and r["comparison"]["off"]["cost_usd"] > 0


def test_same_seed_same_evolution(data, tmp_path):
    a = _run(data, tmp_path / "a.json")["evolution"]["log"]
    b = _run(data, tmp_path / "b.json")["evolution"]["log"]
    assert a == b
    assert a["spawns"] and a["strategies"] and a["model_events"]


def test_domain_catalogue_scopes_roles_and_spawns():
    base = Catalogue([ModelSpec("sup", "replay", Role.SUPERVISOR, 3, cost_per_call=0.01),
                      ModelSpec("s", "replay", Role.STUDENT, 0, cost_per_call=0.001),
                      ModelSpec("r", "replay", Role.STUDENT, 0, cost_per_call=0.0001, reserve=True)])
    h = hier.from_catalogue(base)
    h = hier.apply(h, hier.event("activate", "r", 2, None, "student"))
    h = hier.apply(h, hier.event("promote", "s", 2, "student", "ta"))
    in2, in1 = evolution.domain_catalogue(base, h, 2), evolution.domain_catalogue(base, h, 1)
    assert {s.name for s in in2.active()} == {"sup", "s", "r"}
    assert in2.get("s").role == Role.TA and in1.get("s").role == Role.STUDENT
    assert {s.name for s in in1.active()} == {"sup", "s"}


def test_rejects_unknown_reserve(data, tmp_path):
    with pytest.raises(Exception, match="hold back"):
        evolution.main(["--data", str(data), "--reserve", "nope", "--out", str(tmp_path / "x.json")])
