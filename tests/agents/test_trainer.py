"""The trainer worker's core without a broker: buffer teacher answers, train a round, hot-load the student."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from workers.backends.local import LocalBackend
from selfevolve.distill import evaluate as ev
from selfevolve.distill.live import read_record
from selfevolve.models.catalogue import Catalogue
from selfevolve.config import Settings
from streams.demo import judge_round
from workers.trainer import Trainer

pytestmark = pytest.mark.slow


def _feed(trainer: Trainer, qid: str, model: str, question: str, answer: str, confidence: float) -> None:
    plan = json.dumps({"text": question})
    trainer.observe("route_decision", {"query_id": qid, "plan": plan, "domain": 3})
    trainer.observe("inference_response", {"query_id": qid, "model": model, "answer": answer, "ok": True})
    trainer.observe("score", {"query_id": qid, "model": model, "domain": 3, "confidence": confidence,
                              "relevance": 0.9, "correctness": 0.9, "completeness": 0.8, "clarity": 0.9})


def test_confident_teacher_answers_train_a_student_that_the_backend_hot_loads(tmp_path):
    settings = Settings(home=tmp_path, distill_buffer=4, distill_confidence=0.8)
    cat = Catalogue.load(settings.catalogue)
    trainer = Trainer(settings, cat, "smollm2-135m", steps=3)
    teacher = next(s.name for s in cat.models if s.role == "teacher")
    student = next(s.name for s in cat.models if s.role == "student")
    for i in range(4):
        _feed(trainer, f"q{i}", teacher, f"What is {i} + {i}?", f"{i} plus {i}\nThe answer is {2 * i}.", 0.95)
    _feed(trainer, "low", teacher, "What is 9 + 9?", "18", 0.2)  # not confident enough
    _feed(trainer, "cheap", student, "What is 7 + 7?", "14", 0.99)  # not a teacher
    assert trainer.due() == "3"
    events = trainer.train("3")
    assert trainer.due() is None  # the round drained the buffer
    kinds = [e["kind"] for e in events]
    assert kinds == ["activate", "version"]
    ckpt = Path(events[1]["checkpoint"])
    assert ckpt.is_file() and "loss" in events[1]["reason"]
    record = read_record(ckpt)  # what the demo holds out: exactly the confident teacher answers it trained on
    assert sorted(record["query_ids"]) == ["q0", "q1", "q2", "q3"] and record["examples"] == 4
    assert record["prompt_digests"] == [ev.prompt_digest(f"What is {i} + {i}?") for i in range(4)]
    assert len(record["loss"]) == record["steps"] == 3
    # The event says which way the loss went (fell / rose / stayed flat), as it did.
    assert ev.loss_trend([record["loss"][0], record["loss"][-1]]) in events[1]["reason"]

    backend = LocalBackend(settings)
    spec = cat.get("smollm2-135m")

    async def serve():
        await backend.reload(ckpt, model=spec.name)
        return await backend.complete(spec, "What is 2 + 2?")

    done = asyncio.run(serve())
    assert backend.checkpoint_for(spec) == ckpt
    assert done.answer.strip() and 0.0 <= done.confidence <= 1.0


def test_the_demo_judges_the_base_and_the_trained_checkpoint_on_held_out_questions(tmp_path):
    """The live phase's real path: the base SmolLM2 and a trained checkpoint answer the same questions."""
    settings = Settings(home=tmp_path, distill_buffer=2, distill_confidence=0.8, distill_batch_size=2,
                        distill_max_prompt_tokens=64)
    cat = Catalogue.load(settings.catalogue)
    trainer = Trainer(settings, cat, "smollm2-135m", steps=2)
    teacher = next(s.name for s in cat.models if s.role == "teacher")
    opts = "\nA) yes\nB) no\nAnswer:"
    _feed(trainer, "t0", teacher, "Is ice cold?" + opts, "A", 0.95)
    _feed(trainer, "t1", teacher, "Is fire cold?" + opts, "B", 0.95)
    ckpt = Path(trainer.train("3")[1]["checkpoint"])
    questions = [ev.Question("h0", "Is snow cold?" + opts, "A", ("A", "B")),
                 ev.Question("h1", "Is lava cold?" + opts, "B", ("A", "B"))]
    lines = judge_round(settings, "3", questions, ckpt, read_record(ckpt))
    assert lines[0].startswith("student on 2 held-out questions of domain 3") and "before" in lines[0]
    assert "training loss over 2 steps of 2 answers" in "\n".join(lines)
    assert lines[-1].startswith("training ")
