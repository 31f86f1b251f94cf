"""The README's Results tables are printed from the benchmark JSON, so they cannot drift from it."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import render

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_every_shipped_result_renders_with_its_headline_numbers():
    out = render(RESULTS)
    q = json.loads((RESULTS / "quality.json").read_text())
    assert f"{q['system']['accuracy']:.3f}" in out and f"{q['system']['cost_ratio']:.3f}" in out
    t = json.loads((RESULTS / "throughput.json").read_text())
    rows = [line for line in out.split("### Throughput", 1)[1].splitlines() if line.startswith("| ")][1:]
    assert "every text distinct" in rows[0] and f"**{t['distinct']['qps']:.1f}**" in rows[0]  # quoted first
    assert t["qps"] == t["distinct"]["qps"] and t["distinct"]["workers"]["serve"] == 1
    assert [p["repeat_rate"] for p in t["repeat_curve"]] == [0.0, 0.5, 0.95]
    assert [p["serve_workers"] for p in t["scaling"]][:1] == [1] or "not implemented" in str(t["scaling"])
    assert all(p["qps"] is not None or p["why"] for p in t["scaling"])  # measured, or says why not
    assert {"offered_qps", "p50_ms", "p99_ms"} <= set(t["sustained"]) and "embedder" in t


def test_missing_results_render_nothing(tmp_path):
    assert render(tmp_path) == ""


def test_readme_tables_match_the_json():
    readme = (RESULTS.parents[1] / "README.md").read_text()
    for line in render(RESULTS).splitlines():
        if line.startswith("|"):
            assert line in readme, f"README is stale; rerun python -m bench.report: {line}"


def test_learning_curves_render_and_plot(tmp_path):
    from bench.plotting import plot_learning_curves

    def acc(m):
        return {"mean": m, "lo": m - 0.04, "hi": m + 0.04}

    def rnd(points):
        return {"accuracy": acc(points[-1][1]), "ece": 0.1, "train_wall_s": 1, "eval_wall_s": 1,
                "curve": [{"epochs": e, "step": int(e * 10), "accuracy": acc(a), "ece": 0.1} for e, a in points]}

    task = {"n_train": 10, "n_test": 5, "run": {"args": {"tasks": "arc"}},
            "rounds": {"before": rnd([(0.0, 0.25)]), "response_only": rnd([(0.5, 0.27), (1.0, 0.3)]),
                       "multi_aspect": rnd([(0.5, 0.26), (1.0, 0.31)])}}
    (tmp_path / "distill.json").write_text(json.dumps({"tasks": {"arc": task}}))
    out = render(tmp_path)
    assert "response only 0.5: 0.270, 1: 0.300" in out and "multi aspect 0.5: 0.260, 1: 0.310" in out
    plot_learning_curves({"arc": task}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_empty_and_unset_arguments_are_left_out_of_the_command(tmp_path):
    rnd = {"accuracy": {"mean": 0.3, "lo": 0.2, "hi": 0.4}, "ece": 0.1, "train_wall_s": 1, "eval_wall_s": 1}
    task = {"n_train": 10, "n_test": 5, "rounds": {"before": rnd},
            "run": {"args": {"epochs": 1.0, "curve": "", "steps": "None", "out": "x.json", "tasks": "gsm8k"}}}
    (tmp_path / "distill.json").write_text(json.dumps({"tasks": {"gsm8k": task}}))
    assert "(`python -m bench.distill --epochs 1.0 --tasks gsm8k`)" in render(tmp_path)


def test_pools_render_one_row_each_with_the_target_run(tmp_path):
    def point(lam, cost, ratio):
        return {"lambda": lam, "accuracy": 0.9 * ratio, "cost_ratio": cost, "accuracy_vs_supervisor": ratio}

    curve = [point(0.0, 1.0, 1.0), point(0.1, 0.25, 0.95), point(0.2, 0.08, 0.9)]
    base = {"supervisor_only": {"accuracy": 0.9, "cost_ratio": 1.0}}
    target = {"target": 0.95, "achieved": 0.961, "interval": [0.91, 1.02], "estimate": 0.97,
              "achieved_interval": [0.94, 0.98], "cost_ratio": 0.3, "cost_lambda": 0.08, "audits": 150,
              "audit_rate": 0.05, "cheapest_curve_point": curve[1]}
    q = {"data": "d", "seed": 0, "lambda": 0.1, "theta_high": 0.8, "theta_low": 0.5, "curve": curve,
         "baselines": base, "warmup": {"queries": 5, "cost_usd": 1.0, "cost_ratio": 0.2},
         "system": {"accuracy": 0.855, "cost_ratio": 0.25, "queries": 10, "strategies": {}, "escalation_rate": 0.0,
                    "ece_winner_confidence": 0.0, "ece_model_confidence": 0.0},
         "pools": {"mix": {"queries": 10, "curve": curve, "target": target, "baselines": base,
                           "knn_curve": [point(0.1, 0.45, 0.93)]},
                   "pair": {"queries": 7, "curve": curve[1:], "target": target, "baselines": base}}}
    (tmp_path / "quality.json").write_text(json.dumps(q))
    out = render(tmp_path)
    mix = next(line for line in out.splitlines() if line.startswith("| mix |"))
    assert mix == ("| mix | 10 | 90.0% at 0.080 (λ=0.2) | 95.0% at 0.250 (λ=0.1) | 95.0% at 0.250 (λ=0.1) | "
                   "96.1% [94.0%, 98.0%] | 97.0% [91.0%, 102.0%] | 0.300 (λ=0.08, 150) | 95.0% at 0.250 (λ=0.1) | "
                   "93.0% at 0.450 (λ=0.1) |")
    assert "| pair | 7 |" in out and "--pools --pool-lambdas 0.1 0.2" in out
    assert "mix λ curve: λ=0: 100.0% at 1.000; λ=0.1: 95.0% at 0.250; λ=0.2: 90.0% at 0.080." in out
