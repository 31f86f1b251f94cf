"""One distillation round: build a student, train it with the three losses in one loop, save and load it."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from selfevolve.config import Settings
from selfevolve.distill.config import DistillConfig
from selfevolve.distill.data import Example, collate, encode
from selfevolve.distill.losses import metric_loss, reasoning_loss, response_loss, total_loss
from selfevolve.distill.model import Student
from selfevolve.errors import TrainingError


def build_student(cfg: DistillConfig, settings: Settings) -> Student:
    """A fresh student over cfg.base_model (cached SmolLM2 when None); the tokenizer rides along as data."""
    from selfevolve.distill.lm import load_causal_lm

    torch.manual_seed(cfg.seed)  # the metric head and LoRA A matrices start the same for a given seed
    lm, tokenizer = load_causal_lm(Path(cfg.base_model) if cfg.base_model else None, settings)
    student = Student(lm, cfg)
    student.tokenizer = tokenizer
    student.eval()
    return student


def lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(cfg: DistillConfig, student: Student, examples: list[Example], teacher: nn.Module | None = None,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train student on examples for cfg.total_steps; returns the loss history and wall time.
    With a local `teacher` LM sharing the tokenizer, the response loss is token-level KL to its logits.
    on_step(steps done) runs after every optimizer step (a learning curve evaluates there), its own time
    not counted in wall_s."""
    if not examples:
        raise TrainingError("no examples to distil from")
    tok = student.tokenizer
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    enc = [encode(ex, tok, cfg.max_prompt_tokens, cfg.max_answer_tokens) for ex in examples]
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(examples))
    hist: dict[str, list[float]] = {"loss": [], "response": [], "reasoning": [], "metric": []}
    order: list[int] = []
    t0 = time.perf_counter()
    student.train()
    for step in range(total):
        # Epochs of shuffled examples, cut into batches regardless of epoch boundaries.
        while len(order) < cfg.batch_size:
            perm = list(range(len(enc)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        b = collate([enc[i] for i in idx], [examples[i].metrics for i in idx], tok.pad_token_id)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, total, cfg)

        loss, l_r, l_rs, l_m = _losses(cfg, student, teacher, b)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at step {step}")

        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        for k, v in zip(hist, (loss, l_r, l_rs, l_m)):
            hist[k].append(float(v.detach()))
        if on_step is not None:
            t_cb = time.perf_counter()
            student.eval()
            on_step(step + 1)
            student.train()
            t0 += time.perf_counter() - t_cb
        if cfg.log_every and (step % cfg.log_every == 0 or step == total - 1):
            print(f"step {step}/{total}: loss {hist['loss'][-1]:.4f} (response {hist['response'][-1]:.4f}, "
                  f"reasoning {hist['reasoning'][-1]:.4f}, metric {hist['metric'][-1]:.4f})", flush=True)
    student.eval()
    return {**hist, "steps": total, "examples": len(examples), "wall_s": time.perf_counter() - t0}


def _losses(cfg: DistillConfig, student: Student, teacher: nn.Module | None, b: dict) -> tuple:
    """(total, response, reasoning, metric) losses of one collated batch."""
    # Only positions some row is trained on get logits (position i predicts target i).
    keep = (b["response_mask"] | (b["step_ids"] >= 0)).any(0).nonzero().squeeze(1)
    tgt, rmask, sids = b["targets"][:, keep], b["response_mask"][:, keep], b["step_ids"][:, keep]
    logits, metrics = student(b["input_ids"], b["attention_mask"], keep)
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                     logits_to_keep=keep).logits
    l_r = response_loss(logits, tgt, rmask, teacher_logits, cfg.kl_temperature)
    l_rs = reasoning_loss(logits, tgt, sids) if cfg.lambda_rs else logits.sum() * 0.0
    l_m = metric_loss(metrics, b["metrics"])
    return total_loss(l_r, l_rs, l_m, cfg.lambda_r, cfg.lambda_rs, cfg.lambda_m), l_r, l_rs, l_m


def save_checkpoint(path: Path, student: Student, cfg: DistillConfig) -> Path:
    """One safetensors file: the trained tensors (LoRA + metric head, or all when full fine-tuning) with
    the config in its metadata, so a checkpoint alone rebuilds its student."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Write then rename: inference workers hot-load this path and must never read half a file.
    save_file(student.trainable_state(), str(tmp), metadata={"distill_config": json.dumps(cfg.to_dict())})
    tmp.replace(path)
    return path


def load_checkpoint(path: Path, settings: Settings) -> tuple[Student, DistillConfig]:
    """Rebuild the student saved at path (its base model is loaded through lm.load_causal_lm)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:
        raise TrainingError(f"cannot read checkpoint {path}: {e}") from e
    if "distill_config" not in meta:
        raise TrainingError(f"{path} has no distill_config metadata")
    cfg = DistillConfig.from_dict(json.loads(meta["distill_config"]))
    student = build_student(cfg, settings)
    expected = set(student.trainable_state())
    if set(tensors) != expected:
        raise TrainingError(f"{path} does not match its config: {len(set(tensors) ^ expected)} tensor names differ")
    student.load_state_dict(tensors, strict=False)
    student.eval()
    return student, cfg


def describe(history: dict[str, Any]) -> str:
    """A one-line summary of a round for logs."""
    h = history["loss"]
    return f"{history['steps']} steps on {history['examples']} examples, loss {h[0]:.3f} -> {h[-1]:.3f}, {history['wall_s']:.0f}s"
