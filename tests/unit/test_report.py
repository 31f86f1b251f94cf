"""The README's Results tables are printed from the benchmark JSON, so they cannot drift from it."""

from __future__ import annotations

import json
from pathlib import Path

from selfevolve.bench.report import render

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_every_shipped_result_renders_with_its_headline_numbers():
    out = render(RESULTS)
    q = json.loads((RESULTS / "quality.json").read_text())
    assert f"{q['system']['accuracy']:.3f}" in out and f"{q['system']['cost_ratio']:.3f}" in out
    t = json.loads((RESULTS / "throughput.json").read_text())
    assert f"{t['qps']:.1f}" in out


def test_missing_results_render_nothing(tmp_path):
    assert render(tmp_path) == ""


def test_readme_tables_match_the_json():
    readme = (RESULTS.parents[1] / "README.md").read_text()
    for line in render(RESULTS).splitlines():
        if line.startswith("|"):
            assert line in readme, f"README is stale; rerun python -m selfevolve.bench.report: {line}"
