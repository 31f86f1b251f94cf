"""`selfevolve replay` options and the export format, without running a replay (tests/agents does that)."""

from __future__ import annotations

import json

import pytest

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from streams import log_replay
from streams.cli import build_parser


def test_set_takes_any_setting_typed_by_settings():
    o = log_replay.parse_overrides(["theta_high=0.85", "spawn_backends=[\"replay\", \"local\"]", "spawn_mode=live"])
    assert o == {"theta_high": 0.85, "spawn_backends": ["replay", "local"], "spawn_mode": "live"}
    s = log_replay.with_overrides(Settings(), o)
    assert s.theta_high == 0.85 and s.spawn_backends == ("replay", "local") and s.spawn_mode == "live"
    with pytest.raises(ConfigError, match="Settings field"):
        log_replay.parse_overrides(["theta_hgh=0.85"])
    with pytest.raises(ConfigError, match="Settings field"):
        log_replay.parse_overrides(["theta_high"])
    with pytest.raises(ConfigError, match="--set"):
        log_replay.with_overrides(Settings(), {"knn_k": "many"})


def test_run_dirs_are_named_by_log_seed_and_overrides(tmp_path):
    s = Settings(home=tmp_path)
    plain = log_replay.default_run_dir(s, tmp_path / "demo", 3, {})
    assert plain == tmp_path / "replays" / "demo-seed3"
    other = log_replay.default_run_dir(s, tmp_path / "demo", 3, {"theta_high": 0.85})
    assert other != plain and other == log_replay.default_run_dir(s, tmp_path / "demo", 3, {"theta_high": 0.85})


def test_export_files_are_checked(tmp_path):
    good = tmp_path / "log.jsonl"
    lines = [{"kind": "export", "record": {"format": log_replay.EXPORT_FORMAT}},
             {"kind": "query", "record": {"query_id": "q", "text": "hi", "tenant": "t", "metadata": {}, "ts_ms": 1}},
             {"kind": "feedback", "record": {"query_id": "q", "tenant": "t", "model": "m", "quality": 1.0, "ts_ms": 2}}]
    good.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = log_replay.read_export(good)
    assert [q["query_id"] for q in got["query"]] == ["q"] and got["inference_response"] == []
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"kind": "query", "record": {}}) + "\n")
    with pytest.raises(ConfigError, match="not a selfevolve-export/1 file"):
        log_replay.read_export(bad)
    bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"kind": "answer", "record": {}}) + "\n")
    with pytest.raises(ConfigError, match="unknown kind 'answer'"):
        log_replay.read_export(bad)


def test_live_is_the_only_way_through_the_stack_and_takes_no_what_if_options():
    p = build_parser()
    a = p.parse_args(["replay", "d", "--set", "theta_high=0.9", "--set", "knn_k=5", "--diff", "r"])
    assert a.set == ["theta_high=0.9", "knn_k=5"] and not a.live and a.window == 50
    live = p.parse_args(["replay", "d", "--live", "--set", "theta_high=0.9"])
    with pytest.raises(Exception, match="not to --live"):
        live.fn(live, Settings())
    assert "NOT deterministic" in p._subparsers._group_actions[0].choices["replay"].description
