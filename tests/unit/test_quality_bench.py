"""The quality bench on a tiny RouterBench-format directory: runs, writes the JSON keys and the plot."""

import csv
import json
import random

import pytest

from bench import quality

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
    monkeypatch.setenv("SELFEVOLVE_CACHE_DIR", str(tmp_path / "cache"))
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
