"""`selfevolve replay` is deterministic: the demo slice replayed twice, in two processes, stores the same rows in
every table; another setting changes the decisions and --diff says so; an export of a run replays to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "selfevolve" / "data" / "demo"
# Small enough for a test, large enough for the meta-learner (every 100 answers) to move the thresholds.
ARGS = ["--seed", "3", "--warmup", "120", "--limit", "120", "--window", "20"]

# One chdb engine directory per process: each store is read by a process of its own.
DUMP = """
import json, sys
from pathlib import Path
from selfevolve.config import Settings
from streams.store import TABLES, HistoryStore

store = HistoryStore.open(Settings(clickhouse_url=None, chdb_path=Path(sys.argv[1])))
out = {}
for table in TABLES.values():
    columns, rows = store.query(f"SELECT * FROM {table} FINAL")
    out[table] = sorted(json.dumps(dict(zip(columns, r)), sort_keys=True, default=str) for r in rows)
store.close()
print(json.dumps(out))
"""


def _cli(home: Path, *args: str) -> str:
    env = {**os.environ, "SELFEVOLVE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _tables(run: Path) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", DUMP, str(run / "chdb")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.slow
def test_replay_twice_same_tables_other_setting_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _cli(tmp_path, "replay", str(DEMO), *ARGS, "--out", str(a))
    _cli(tmp_path, "replay", str(DEMO), *ARGS, "--out", str(b))
    ta, tb = _tables(a), _tables(b)
    # Every table, every column: ids and timestamps too are the same (event time, ids from the data).
    assert ta == tb
    assert len(ta["route_decisions"]) == 240 and len(ta["answers"]) == 240 and ta["strategies"]
    assert ta["feedback"] and not ta["dead_letters"]
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())

    out = _cli(tmp_path, "replay", str(DEMO), *ARGS, "--set", "theta_high=0.95", "--out", str(c), "--diff", str(a))
    tc = _tables(c)
    assert tc["route_decisions"] != ta["route_decisions"] and tc["answers"] != ta["answers"]
    summary = json.loads((c / "summary.json").read_text())
    assert summary["overrides"] == {"theta_high": 0.95}
    changed = [line for line in out.splitlines() if line.startswith("decisions changed:")]
    assert changed and not changed[0].startswith("decisions changed: 0 ")
    assert '{"theta_high": 0.95}' in out and "accuracy" in out

    # An export of run a is a LOG too: replayed, it makes the same decisions from the recorded answers.
    log = tmp_path / "a.jsonl"
    _cli(tmp_path, "export", str(log), "--chdb", str(a / "chdb"))
    out = _cli(tmp_path, "replay", str(log), "--window", "20", "--out", str(tmp_path / "d"), "--diff", str(a))
    assert "decisions changed: 0 of 240" in out
    d = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert d["calls_without_recording"] == 0 and d["accuracy"] == json.loads((a / "summary.json").read_text())["accuracy"]
