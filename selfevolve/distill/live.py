"""Live distillation (Algorithm 4.1): buffered teacher answers of one domain become one training round."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from selfevolve.config import Settings
from selfevolve.distill.config import DistillConfig
from selfevolve.distill.data import Example, split_steps
from selfevolve.distill.evaluate import prompt_digest


def examples_from_buffer(items: list[Mapping], domain: str) -> list[Example]:
    """Teacher responses (prompt, answer, metrics) as training examples; steps split from the answer."""
    out = []
    for it in items:
        steps, final = split_steps(str(it["answer"]))
        metrics = tuple(float(x) for x in (it.get("metrics") or (0.0, 0.0, 0.0, 0.0)))
        out.append(Example(prompt=str(it["prompt"]), response=final or str(it["answer"]), steps=steps,
                           metrics=metrics, domain=domain))
    return out


def checkpoint_path(settings: Settings, domain: str, version: int) -> Path:
    return settings.home / "students" / f"domain-{domain}" / f"v{version}.safetensors"


def record_path(checkpoint: Path) -> Path:
    """The round record beside a checkpoint: which queries trained it and its loss at every step."""
    return Path(checkpoint).with_suffix(".round.json")


def write_record(checkpoint: Path, record: dict) -> Path:
    """Write the round record (then rename, so a reader never sees half of it)."""
    path = record_path(checkpoint)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def read_record(checkpoint: Path) -> dict:
    """The round record of a checkpoint; {} when the round wrote none."""
    path = record_path(checkpoint)
    return json.loads(path.read_text()) if path.is_file() else {}


def train_round(settings: Settings, domain: str, items: list[Mapping], version: int, steps: int,
                base: DistillConfig | None = None) -> tuple[Path, dict]:
    """Train a fresh LoRA student for `domain` on `items`; write checkpoint version `version` and its round
    record (the query ids it trained on, so an evaluation can hold those out, and the loss per step)."""
    from selfevolve.distill.train import build_student, save_checkpoint, train

    cfg = replace(base or DistillConfig(), domain=f"d{domain}", steps=steps, log_every=0,
                  batch_size=settings.distill_batch_size, max_prompt_tokens=settings.distill_max_prompt_tokens,
                  max_answer_tokens=settings.distill_max_answer_tokens)
    # A short round still reaches its peak learning rate: warm up over at most a quarter of it.
    cfg = replace(cfg, warmup_steps=min(cfg.warmup_steps, max(1, steps // 4)))
    student = build_student(cfg, settings)
    history = train(cfg, student, examples_from_buffer(items, domain))
    path = save_checkpoint(checkpoint_path(settings, domain, version), student, cfg)
    summary = {"steps": history["steps"], "examples": history["examples"], "wall_s": history["wall_s"],
               "first_loss": history["loss"][0], "last_loss": history["loss"][-1]}
    write_record(path, {"domain": str(domain), "version": version, **summary, "batch_size": cfg.batch_size,
                        "loss": history["loss"],
                        "query_ids": [str(it["query_id"]) for it in items if it.get("query_id") is not None],
                        "prompt_digests": [prompt_digest(str(it["prompt"])) for it in items]})
    return path, summary
