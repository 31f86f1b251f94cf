"""`selfevolve bench distill`: a SmolLM2-135M student distilled from GPT-4 on ARC-Challenge and GSM8K.

ARC-Challenge comes from RouterBench (Hu et al., 2024, "RouterBench: A Benchmark for Multi-LLM Routing System");
GSM8K teacher answers from RouteLLM (lm-sys, Apache-2.0). Gold labels only score the student here.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from selfevolve.config import Settings
from selfevolve.distill.config import DistillConfig
from selfevolve.distill.data import LETTERS, Example, arc_examples, gsm8k_examples, last_number
from selfevolve.distill.model import Student
from selfevolve.distill.train import build_student, describe, train
from selfevolve.lm import chat_ids

CORRECTNESS = 1  # the metric head's correctness output is the confidence calibrated here


def _batches(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], att[i, : len(s)] = torch.tensor(s), 1
    return ids, att


@torch.no_grad()
def eval_arc(student: Student, examples: list[Example], batch: int = 8) -> tuple[list[bool], list[float]]:
    """Answer letter = argmax of the four letters' logits at the first answer position (the student is not
    asked to generate, which a 135M model does unreliably); confidence = the metric head on the same pass (the
    prompt without the one-token letter, which saves a second forward)."""
    tok = student.tokenizer
    letter_ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]
    correct, conf = [], []
    for chunk in _batches(examples, batch):
        prompts = [chat_ids(tok, ex.prompt) for ex in chunk]
        ids, att = _right_pad(prompts, tok.pad_token_id)
        last = att.sum(1) - 1
        keep = last.unique()
        logits, metrics = student(ids, att, keep)
        col = torch.searchsorted(keep, last)
        picks = logits[torch.arange(len(chunk)), col][:, letter_ids].argmax(-1).tolist()
        correct += [LETTERS[k] == ex.gold for k, ex in zip(picks, chunk)]
        conf += metrics[:, CORRECTNESS].tolist()
    return correct, conf


@torch.no_grad()
def eval_gsm8k(student: Student, examples: list[Example], batch: int = 8, max_new_tokens: int = 192
               ) -> tuple[list[bool], list[float]]:
    """Greedy step-by-step answers scored by their last number against gold; confidence from the metric head."""
    tok = student.tokenizer
    correct, conf = [], []
    for chunk in _batches(examples, batch):
        prompts = [chat_ids(tok, ex.prompt) for ex in chunk]
        T = max(map(len, prompts))
        # Left padding for batched generation; generate derives positions from the attention mask.
        ids = torch.tensor([[tok.pad_token_id] * (T - len(p)) + p for p in prompts])
        att = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
        out = student.lm.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[:, T:].tolist()
        answers = [[t for t in row if t != tok.pad_token_id] for row in new]
        ids2, att2 = _right_pad([p + a for p, a in zip(prompts, answers)], tok.pad_token_id)
        _, metrics = student(ids2, att2)
        texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
        correct += [ex.gold is not None and last_number(t) == ex.gold for t, ex in zip(texts, chunk)]
        conf += metrics[:, CORRECTNESS].tolist()
    return correct, conf


def ece(correct: list[bool], conf: list[float], bins: int = 10) -> float:
    """Expected calibration error over equal-width confidence bins."""
    c, p = np.asarray(correct, float), np.clip(np.asarray(conf, float), 0, 1)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(c[idx == b].mean() - p[idx == b].mean()) * (idx == b).mean() for b in range(bins) if (idx == b).any()))


def bootstrap(a: list[bool], b: list[bool] | None = None, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of a (or paired mean of a - b) with a percentile bootstrap 95% interval."""
    x = np.asarray(a, float) - (np.asarray(b, float) if b is not None else 0.0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi)}


def run_task(name: str, train_ex: list[Example], test_ex: list[Example], cfg: DistillConfig,
             settings: Settings, evaluate, on_round=None) -> dict:
    """Before / response-only / all-three-losses rounds, each from a fresh copy of the base model.
    on_round(partial result) runs after each round, so a run cut short keeps what it measured."""
    rounds = {
        "before": None,
        "response_only": replace(cfg, lambda_rs=0.0, lambda_m=0.0, domain=name),
        "multi_aspect": replace(cfg, domain=name),
    }
    res: dict = {"n_train": len(train_ex), "n_test": len(test_ex), "rounds": {}}
    correct: dict[str, list[bool]] = {}
    for rname, rcfg in rounds.items():
        student = build_student(rcfg or replace(cfg, domain=name), settings)
        hist = None
        if rcfg is not None:
            hist = train(rcfg, student, train_ex)
            print(f"{name} {rname}: {describe(hist)}", flush=True)
        t0 = time.perf_counter()
        ok, conf = evaluate(student, test_ex)
        correct[rname] = ok
        res["rounds"][rname] = {
            "accuracy": bootstrap(ok),
            "ece": ece(ok, conf),
            "mean_confidence": float(np.mean(conf)),
            "train_wall_s": hist["wall_s"] if hist else 0.0,
            "eval_wall_s": time.perf_counter() - t0,
            "loss_first_last": [hist["loss"][0], hist["loss"][-1]] if hist else None,
            "loss_history": hist["loss"] if hist else None,
        }
        print(f"{name} {rname}: accuracy {np.mean(ok):.3f}, ECE {res['rounds'][rname]['ece']:.3f}", flush=True)
        del student
        if on_round:
            on_round(res)
    res["multi_minus_before"] = bootstrap(correct["multi_aspect"], correct["before"])
    res["multi_minus_response"] = bootstrap(correct["multi_aspect"], correct["response_only"])
    res["response_minus_before"] = bootstrap(correct["response_only"], correct["before"])
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="selfevolve bench distill", description=__doc__)
    p.add_argument("--train-limit", type=int, default=None, help="train examples per task (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test examples per task (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per round (default: 1 epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tasks", default="arc,gsm8k")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/distill.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings()
    base = DistillConfig(batch_size=args.batch_size, lr=args.lr, log_every=5)
    base = replace(base, steps=args.steps) if args.steps else replace(base, epochs=1.0)
    out: dict = {"config": base.to_dict(), "args": {k: str(v) for k, v in vars(args).items()},
                 "threads": torch.get_num_threads(), "tasks": {},
                 "data": "ARC-Challenge: RouterBench (Hu et al., 2024); GSM8K: RouteLLM (lm-sys)"}
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(task: str):
        def on_round(partial: dict) -> None:
            out["tasks"][task] = partial
            args.out.write_text(json.dumps(out, indent=1))
        return on_round

    for task in args.tasks.split(","):
        if task == "arc":
            tr = arc_examples(settings.data_dir, "train", args.train_limit)
            te = [e for e in arc_examples(settings.data_dir, "test", args.test_limit) if e.gold]
            out["tasks"]["arc"] = run_task("arc", tr, te, base, settings, eval_arc, save("arc"))
        elif task == "gsm8k":
            tr = gsm8k_examples(settings.data_dir, "train", args.train_limit)
            te = gsm8k_examples(settings.data_dir, "test", args.test_limit)
            out["tasks"]["gsm8k"] = run_task(
                "gsm8k", tr, te, base, settings,
                lambda s, ex: eval_gsm8k(s, ex, max_new_tokens=args.max_new_tokens), save("gsm8k"))
        else:
            p.error(f"unknown task {task}")
        args.out.write_text(json.dumps(out, indent=1))
    out["wall_s"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(out, indent=1))
    for name, r in out["tasks"].items():
        acc = {k: v["accuracy"]["mean"] for k, v in r["rounds"].items()}
        d = r["multi_minus_before"]
        print(f"{name}: before {acc['before']:.3f}, response-only {acc['response_only']:.3f}, multi-aspect "
              f"{acc['multi_aspect']:.3f}; multi - before {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]; "
              f"round {r['rounds']['multi_aspect']['train_wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
