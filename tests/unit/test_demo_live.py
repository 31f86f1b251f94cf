"""The demo's live phase, without a broker: which questions it holds out, how it judges them, what it prints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.distill import evaluate as ev
from selfevolve.distill.live import read_record, write_record
from streams import demo

DEMO = Path(demo.__file__).resolve().parent.parent / "selfevolve" / "data" / "demo"


@pytest.fixture(scope="module")
def dataset():
    return load_dir(DEMO)


def _rows(dataset, task: str, phase: str = "test", n: int = 30):
    samples = [s for s in dataset if s.task == task][:n]
    return [(f"run:{s.sample_id}", s.prompt, s.sample_id, phase, task) for s in samples]


def test_gold_questions_keep_judgeable_replayed_rows_only(dataset):
    wino = _rows(dataset, "winogrande", n=5)
    rows = wino + _rows(dataset, "mbpp", n=3) + [("run:nope", "Q?\nA) x\nB) y", "nope", "test", "winogrande")]
    got = demo.gold_questions(rows, dataset)
    assert [q.query_id for q in got] == [r[0] for r in wino]  # code has no gold letter; unknown samples drop
    for q, (_, prompt, sid, _, _) in zip(got, wino):
        sample = dataset.get(sid)
        right = {ev.extract(sample.responses[m], q.offered) for m, c in sample.correct.items() if c >= 1.0}
        assert q.offered == ("A", "B") and q.gold in right and q.prompt == prompt and q.task == "winogrande"


def test_judge_round_scores_the_before_and_after_answers(dataset):
    qs = demo.gold_questions(_rows(dataset, "arc-challenge", n=24), dataset)
    asked = []

    def answer(which, prompts):
        asked.append((which, prompts))
        return ["A"] * len(prompts) if which == "before" else [q.gold for q in qs]

    lines = demo.judge_round(Settings(), "5", qs, Path("unused"), {"loss": [0.9, 0.5], "batch_size": 4,
                                                                   "examples": 20}, answer=answer)
    n, a_right = len(qs), sum(q.gold == "A" for q in qs)
    assert [w for w, _ in asked] == ["before", "after"] and asked[0][1] == [q.prompt for q in qs]
    assert f"{a_right}/{n} ({a_right / n:.0%}) before, {n}/{n} (100%) after" in lines[0]
    assert "chance for 4-option questions is 25%" in lines[1]
    assert lines[-1].startswith("training helped on held-out questions")


def _live(monkeypatch, tmp_path, dataset, record: dict | None, answers: dict[str, str]):
    """Run live_distillation with the broker steps replaced; returns the prompts each model was asked."""
    ckpt = tmp_path / "v1.safetensors"
    if record is not None:
        write_record(ckpt, record)
    rows = _rows(dataset, "winogrande", n=40)
    asked: dict[str, list[str]] = {}

    async def spawn_and_wait(settings, stack, domain, n, timeout):
        return {"checkpoint": str(ckpt), "reason": "trained"}

    async def served_check(settings, q, timeout):
        print("[live] served check: stub")

    def answer(which, prompts):
        asked[which] = prompts
        return [answers[which]] * len(prompts)

    monkeypatch.setattr(demo, "_busiest_domain", lambda s: (0, 21))
    monkeypatch.setattr(demo, "_spawn_and_wait", spawn_and_wait)
    monkeypatch.setattr(demo, "_served_check", served_check)
    monkeypatch.setattr(demo, "domain_questions", lambda s, d: demo.gold_questions(rows, dataset))
    monkeypatch.setattr(demo, "_model_answers", lambda s, c: answer)
    asyncio.run(demo.live_distillation(Settings(home=tmp_path), stack=None))
    return rows, asked


def test_live_phase_prints_held_out_accuracy_before_and_after(monkeypatch, tmp_path, dataset, capsys):
    trained = _rows(dataset, "winogrande", n=40)[:10]
    record = {"query_ids": [r[0] for r in trained[:5]], "batch_size": 4, "examples": 10,
              "prompt_digests": [ev.prompt_digest(r[1]) for r in trained[5:]], "loss": [0.627, 0.7, 0.75, 0.79]}
    assert read_record(tmp_path / "v1.safetensors") == {}
    rows, asked = _live(monkeypatch, tmp_path, dataset, record, {"before": "B", "after": "B"})
    out = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[live]")]
    held = asked["before"]
    assert held == asked["after"] and len(held) == demo.HELD_OUT
    assert not {r[1] for r in trained} & set(held)  # neither the trained ids nor the trained prompts come back
    report = "\n".join(out)
    assert f"[live] student on {demo.HELD_OUT} held-out questions of domain 0 ({demo.HELD_OUT} winogrande)" in report
    assert "chance for 2-option questions is 50%" in report
    assert "it rose (0.627 -> 0.790" in report
    assert out[-1].startswith("[live] training did not improve the student on held-out questions")


def test_live_phase_evaluates_nothing_without_a_round_record(monkeypatch, tmp_path, dataset, capsys):
    _, asked = _live(monkeypatch, tmp_path, dataset, None, {"before": "B", "after": "B"})
    assert asked == {}
    assert "no round record naming its training questions" in capsys.readouterr().out
