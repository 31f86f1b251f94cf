"""The quality bench on a tiny RouterBench-format directory: runs, writes the JSON keys and the plot."""

import csv
import json
import random

import numpy as np
import pytest

from bench import quality
from selfevolve.errors import ConfigError

MODELS = ["tiny", "medium", "boss"]
PRICE = {"tiny": 0.0001, "medium": 0.0005, "boss": 0.005}
SKILL = {"tiny": 0.5, "medium": 0.75, "boss": 0.95}


def _write(path, task, split, n, rng):
    header = ["", "sample_id", "prompt", "eval_name", *MODELS, *[f"{m}|model_response" for m in MODELS],
              *[f"{m}|total_cost" for m in MODELS], "oracle_model_to_route_to"]
    with open(path / f"{task}_{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            right = rng.choice("AB")
            prompt = f"Question {task} {split} {i} about topic {i % 5}?\nA) yes\nB) no\nAnswer:"
            ok = {m: rng.random() < SKILL[m] for m in MODELS}
            ans = {m: right if ok[m] else ("B" if right == "A" else "A") for m in MODELS}
            w.writerow([i, f"{task}.{split}.{i}", repr([prompt]), task, *[float(ok[m]) for m in MODELS],
                        *[repr([ans[m]]) for m in MODELS], *[PRICE[m] for m in MODELS], "boss"])


@pytest.mark.slow
def test_bench_writes_json_and_plot(tmp_path, monkeypatch):
    from selfevolve.routing import embed_cache

    # The real embedder (settings.embedder, built under the cache dir by `make embeddings`); its vectors of
    # these prompts are cached here, not in the project's cache.
    monkeypatch.setattr(embed_cache, "cache_path", lambda settings: tmp_path / "cache" / "vectors.npz")
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    for task in ("alpha", "beta"):
        _write(data, task, "train", 30, rng)
        _write(data, task, "test", 15, rng)
    out = tmp_path / "res" / "quality.json"
    assert quality.main(["--data", str(data), "--supervisor", "boss", "--lambdas", "0", "0.5",
                         "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["system"]["queries"] == 30 and 0 <= r["system"]["accuracy"] <= 1
    assert r["baselines"]["supervisor_only"]["cost_ratio"] == pytest.approx(1.0)
    for name in ("random", "static_per_task", "knn", "oracle", "ablation_no_similarity",
                 "ablation_no_cascade", "ablation_no_cost_awareness"):
        assert {"accuracy", "cost_ratio"} <= set(r["baselines"][name])
    assert [c["lambda"] for c in r["curve"]] == [0.0, 0.5]
    assert r["warmup"]["queries"] == 60 and r["warmup"]["cost_usd"] > 0
    assert r["baselines"]["oracle"]["accuracy"] >= r["system"]["accuracy"]
    assert out.with_suffix(".png").stat().st_size > 1000


def _fake_embed(settings, prompts):
    # A deterministic unit vector per prompt: enough for routing to run, no model to load.
    out = []
    for p in prompts:
        v = np.random.default_rng(sum(map(ord, p)) * 7919 + len(p)).standard_normal(16)
        out.append(v / np.linalg.norm(v))
    return np.asarray(out, dtype=np.float32)


@pytest.fixture()
def small(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "embed_all", _fake_embed)
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(1)
    _write(data, "alpha", "train", 20, rng)
    _write(data, "alpha", "test", 20, rng)
    return data


def test_models_restricts_any_dir_to_a_sub_pool(small, tmp_path):
    out = tmp_path / "q.json"
    assert quality.main(["--data", str(small), "--models", "tiny,boss", "--lambdas", "0.1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["models"] == ["tiny", "boss"] and r["supervisor"] == "boss"
    # Only the pool is ever called: the best single model is one of the two, and the system pays only them.
    assert any(k.startswith("best_single (") and k[13:-1] in ("tiny", "boss") for k in r["baselines"])
    assert r["system"]["queries"] == 20 and r["warmup"]["queries"] == 20
    with pytest.raises(ConfigError, match="not in this data"):
        quality.main(["--data", str(small), "--models", "tiny,nope", "--quick"])


def test_data_without_response_texts_is_refused(small, tmp_path):
    for f in small.iterdir():  # blank every answer cell of one model, as a scores-only export would be
        rows = list(csv.reader(f.open()))
        col = rows[0].index("medium|model_response")
        for row in rows[1:]:
            row[col] = ""
        with f.open("w", newline="") as out:
            csv.writer(out).writerows(rows)
    with pytest.raises(ConfigError, match=r"no response texts for \['medium'\]"):
        quality.main(["--data", str(small), "--quick"])
    # Leaving the silent model out is the way through.
    assert quality.main(["--data", str(small), "--models", "tiny,boss", "--quick"]) == 0


def test_the_pass_runs_the_shipped_folds_and_reads_gold_after_delivery(small, monkeypatch):
    from selfevolve.flow import driver
    from selfevolve.flow.workload import Workload

    sent = []
    real = Workload.feedback

    def spy(self, answer):
        sent.append(answer["query_id"])
        return real(self, answer)

    monkeypatch.setattr(Workload, "feedback", spy)
    calls = []
    original = driver.replay
    monkeypatch.setattr(driver, "replay", lambda d, *a, **kw: calls.append([f.name for f in d.folds])
                        or original(d, *a, **kw))
    assert quality.main(["--data", str(small), "--quick"]) == 0
    from selfevolve.flow import dataflow

    assert calls == [[n.name for n in dataflow.GRAPH if n.role == dataflow.SERVE]]  # the serve folds, GRAPH order
    assert len(sent) == 40 and len(set(sent)) == 40  # one feedback round per delivered answer


def test_pools_write_curve_target_and_baselines_per_pool(small, tmp_path, monkeypatch):
    from bench import quality_pools

    # Two pools of the tiny directory: the headline's (all models, reused) and a two-model one.
    monkeypatch.setattr(quality_pools, "POOLS", {"all": (str(small), None), "pair": (str(small), "tiny,boss")})
    out = tmp_path / "q.json"
    assert quality.main(["--data", str(small), "--lambdas", "0.1", "--pools", "--pool-lambdas", "0.1", "1.0",
                         "--target", "0.9", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"system", "curve", "baselines"} <= set(r)  # the headline's keys stay
    assert list(r["pools"]) == ["all", "pair"]
    for p in r["pools"].values():
        assert {"system", "curve", "target", "baselines"} <= set(p)
        assert {"target", "achieved", "interval", "cost_ratio"} <= set(p["target"]) and p["target"]["target"] == 0.9
        assert p["baselines"]["supervisor_only"]["cost_ratio"] == pytest.approx(1.0)
    assert r["pools"]["all"]["curve"] == r["curve"]
    assert [c["lambda"] for c in r["pools"]["pair"]["curve"]] == [0.1, 1.0] and r["pools"]["pair"]["models"] == ["tiny", "boss"]
    for p in r["pools"].values():
        assert [c["lambda"] for c in p["knn_curve"]] == [0.1, 1.0]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_the_target_run_adds_the_metalearner_and_audits_the_supervisor(small, monkeypatch):
    from bench import quality_pools
    from selfevolve.flow import driver

    calls = []
    original = driver.replay
    monkeypatch.setattr(driver, "replay", lambda d, *a, **kw: calls.append(d) or original(d, *a, **kw))
    a = quality._parser().parse_args(["--data", str(small)])
    a.lam, a.pool_lambdas, a.target = 0.1, [0.1], 0.9
    entry = quality_pools.pool(a, "x", str(small), None, [0.1])
    target = calls[-1]
    from selfevolve.flow import dataflow

    serve = [n.name for n in dataflow.GRAPH if n.role == dataflow.SERVE]
    assert [f.name for f in target.folds] == serve + ["metalearner"]  # the serve folds, and λ's controller
    audited = [d for d in target.result.of("route_decision") if "boss" in d["models"]]
    assert entry["target"]["audits"] >= 1 and audited
    assert 0.0 <= entry["target"]["achieved"] and entry["target"]["interval"][0] <= entry["target"]["interval"][1]
