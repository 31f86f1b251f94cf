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
from selfevolve.distill.data import LETTERS, Example, arc_examples, arc_options, gsm8k_examples, last_number
from selfevolve.distill.model import Student
from selfevolve.distill.train import build_student, describe, train
from selfevolve.distill.lm import chat_ids

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
def eval_arc(student: Student, examples: list[Example], batch: int = 8) -> tuple[list[bool], list[float], dict]:
    """Answer letter = argmax of the four letters' logits at the first answer position (the student is not
    asked to generate, which a 135M model does unreliably); confidence = the metric head on the same pass (the
    prompt without the one-token letter, which saves a second forward)."""
    tok = student.tokenizer
    letter_ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]
    correct, conf, picked = [], [], []
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
        picked += [LETTERS[k] for k in picks]
    # How often each letter is picked: a student at chance shows as one letter taking most picks.
    return correct, conf, {"picked": {x: picked.count(x) for x in LETTERS}}


@torch.no_grad()
def eval_arc_options(student: Student, examples: list[Example]) -> tuple[list[bool], list[float], dict]:
    """Answer letter = the option whose text the student finds most likely after its letter ("B) whale": mean
    log-probability of "whale"), the usual way to read a small LM's multiple-choice answer. The letter's own
    token is left out of the score: an untrained 135M model puts nearly all its mass on "A" whatever the
    question. The prompt runs once and its key/value cache, repeated per option, serves the short options in one
    batch. Also reports the bare-letter pick (the prompt's last logits) and, as
    confidence, the metric head over the prompt, as eval_arc does."""
    tok = student.tokenizer
    letter_ids = [tok(x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]
    correct, conf, picked, letter_ok = [], [], [], []
    for ex in examples:
        prompt = torch.tensor([chat_ids(tok, ex.prompt)])
        n = prompt.shape[1]
        out = student.lm(input_ids=prompt, attention_mask=torch.ones_like(prompt), use_cache=True,
                         output_hidden_states=True, logits_to_keep=1)
        cache = out.past_key_values
        conf.append(student.metric_head(out.hidden_states[-1].mean(1))[0, CORRECTNESS].item())
        letter_ok.append(LETTERS[int(out.logits[0, -1, letter_ids].argmax())] == ex.gold)
        options = arc_options(ex.prompt)
        heads = [tok(f"{x})", add_special_tokens=False)["input_ids"] for x in options]
        bodies = [tok(f" {t}", add_special_tokens=False)["input_ids"] for t in options.values()]
        cont, cont_att = _right_pad([h + b for h, b in zip(heads, bodies)], tok.pad_token_id)
        cache.batch_repeat_interleave(len(options))  # one prompt cache row per option
        att = torch.cat([torch.ones((len(options), n), dtype=torch.long), cont_att], 1)
        o = student.lm(input_ids=cont, attention_mask=att, past_key_values=cache, use_cache=True)
        logp = torch.log_softmax(o.logits.float(), -1)
        scores = {}
        for row, (x, h, b) in enumerate(zip(options, heads, bodies)):
            pos = torch.arange(len(h) - 1, len(h) + len(b) - 1)  # position i predicts token i + 1
            scores[x] = logp[row, pos, torch.tensor(b)].mean().item()
        choice = max(scores, key=scores.get)
        correct.append(choice == ex.gold)
        picked.append(choice)
    return correct, conf, {"picked": {x: picked.count(x) for x in LETTERS},
                           "bare_letter_accuracy": float(np.mean(letter_ok)) if letter_ok else 0.0}


@torch.no_grad()
def eval_gsm8k(student: Student, examples: list[Example], batch: int = 8, max_new_tokens: int = 192
               ) -> tuple[list[bool], list[float], dict]:
    """Greedy step-by-step answers scored by their last number against gold; confidence from the metric head."""
    tok = student.tokenizer
    correct, conf, no_number = [], [], 0
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
        no_number += sum(last_number(t) is None for t in texts)
    return correct, conf, {"answers_without_a_number": no_number}


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
             settings: Settings, evaluate, on_round=None, curve: tuple[float, ...] = ()) -> dict:
    """Before / response-only / all-three-losses rounds, each from a fresh copy of the base model.
    curve: epochs within a round at which the student is also evaluated on the test split (the learning
    curve; the round's own result is at its end). on_round(partial result) runs after each round, so a run
    cut short keeps what it measured."""
    rounds = {
        "before": None,
        "response_only": replace(cfg, lambda_rs=0.0, lambda_m=0.0, domain=name),
        "multi_aspect": replace(cfg, domain=name),
    }
    per_epoch = -(-len(train_ex) // cfg.batch_size)
    res: dict = {"n_train": len(train_ex), "n_test": len(test_ex), "steps_per_epoch": per_epoch, "rounds": {}}
    correct: dict[str, list[bool]] = {}

    def measure(student) -> dict:
        t0 = time.perf_counter()
        ok, conf, extra = evaluate(student, test_ex)
        return {"ok": ok, "accuracy": bootstrap(ok), "ece": ece(ok, conf), "mean_confidence": float(np.mean(conf)),
                "eval_wall_s": time.perf_counter() - t0, **extra}

    for rname, rcfg in rounds.items():
        student = build_student(rcfg or replace(cfg, domain=name), settings)
        hist, points = None, []
        if rcfg is not None:
            at = {max(1, round(e * per_epoch)): e for e in curve}

            def on_step(done: int) -> None:
                if done in at and done < rcfg.total_steps(len(train_ex)):
                    m = measure(student)
                    points.append({"epochs": at[done], "step": done, "accuracy": m["accuracy"], "ece": m["ece"]})
                    print(f"{name} {rname} at {at[done]:g} epochs: accuracy {np.mean(m['ok']):.3f}", flush=True)

            hist = train(rcfg, student, train_ex, on_step=on_step if curve else None)
            print(f"{name} {rname}: {describe(hist)}", flush=True)
        m = measure(student)
        correct[rname] = m.pop("ok")
        steps = hist["steps"] if hist else 0
        points.append({"epochs": steps / per_epoch, "step": steps, "accuracy": m["accuracy"], "ece": m["ece"]})
        res["rounds"][rname] = {
            **m,
            "train_wall_s": hist["wall_s"] if hist else 0.0,
            "loss_first_last": [hist["loss"][0], hist["loss"][-1]] if hist else None,
            "loss_history": hist["loss"] if hist else None,
            "curve": points,
        }
        print(f"{name} {rname}: accuracy {np.mean(correct[rname]):.3f}, ECE {res['rounds'][rname]['ece']:.3f}",
              flush=True)
        del student
        if on_round:
            on_round(res)
    res["multi_minus_before"] = bootstrap(correct["multi_aspect"], correct["before"])
    res["multi_minus_response"] = bootstrap(correct["multi_aspect"], correct["response_only"])
    res["response_minus_before"] = bootstrap(correct["response_only"], correct["before"])
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve bench distill", description=__doc__)
    p.add_argument("--train-limit", type=int, default=None, help="train examples per task (default: all)")
    p.add_argument("--test-limit", type=int, default=None, help="test examples per task (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per round (default: --epochs)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs per round when --steps is not given")
    p.add_argument("--curve", default="", help="comma-separated epochs within a round at which to evaluate too, "
                                               "e.g. 0.25,0.5,1 (the learning curve)")
    p.add_argument("--batch-size", type=int, default=None, help="default: settings.distill_batch_size")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--tasks", default="arc,gsm8k")
    p.add_argument("--arc-target", choices=("option", "letter"), default="option",
                   help="ARC: train on the teacher's letter written out as its option and read the student's "
                        "answer as its most likely option (option), or train and read bare letters (letter)")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/distill.json"))
    return p


def _arc(args: argparse.Namespace, settings: Settings, base: DistillConfig, curve: tuple[float, ...],
         on_round) -> tuple[str, dict]:
    """The ARC-Challenge rounds, with reference points from the gold letters (reporting only): chance, and
    always answering one letter."""
    tr = arc_examples(settings.data_dir, "train", args.train_limit, spell_out=args.arc_target == "option")
    te = [e for e in arc_examples(settings.data_dir, "test", args.test_limit) if e.gold]
    golds = [e.gold for e in te]
    reference = {"chance": 1 / len(LETTERS), "always_one_letter": {x: golds.count(x) / len(golds) for x in LETTERS}}
    name = "arc" if args.arc_target == "option" else "arc_letter"
    evaluate = eval_arc_options if args.arc_target == "option" else eval_arc
    return name, {**run_task(name, tr, te, base, settings, evaluate, on_round(name), curve), "reference": reference}


def _gsm8k(args: argparse.Namespace, settings: Settings, base: DistillConfig, curve: tuple[float, ...],
           on_round) -> tuple[str, dict]:
    tr = gsm8k_examples(settings.data_dir, "train", args.train_limit)
    te = gsm8k_examples(settings.data_dir, "test", args.test_limit)
    return "gsm8k", run_task("gsm8k", tr, te, base, settings,
                             lambda s, ex: eval_gsm8k(s, ex, max_new_tokens=args.max_new_tokens),
                             on_round("gsm8k"), curve)


def _summary(tasks: dict) -> None:
    for name, r in tasks.items():
        if "multi_minus_before" not in r:
            continue  # a task cut short earlier
        acc = {k: v["accuracy"]["mean"] for k, v in r["rounds"].items()}
        d = r["multi_minus_before"]
        print(f"{name}: before {acc['before']:.3f}, response-only {acc['response_only']:.3f}, multi-aspect "
              f"{acc['multi_aspect']:.3f}; multi - before {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]; "
              f"round {r['rounds']['multi_aspect']['train_wall_s']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings.load()
    base = DistillConfig(batch_size=args.batch_size or settings.distill_batch_size, lr=args.lr, log_every=5)
    base = replace(base, steps=args.steps) if args.steps else replace(base, epochs=args.epochs)
    curve = tuple(float(x) for x in args.curve.split(",") if x.strip())
    # Tasks run separately (each is long on 2 cores) share one results file: keep the others' results.
    previous = json.loads(args.out.read_text()).get("tasks", {}) if args.out.exists() else {}
    out: dict = {"tasks": previous,
                 "data": "ARC-Challenge: RouterBench (Hu et al., 2024); GSM8K: RouteLLM (lm-sys)"}
    run_info = {"config": base.to_dict(), "args": {k: str(v) for k, v in vars(args).items()},
                "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def on_round(task: str):
        def save(partial: dict) -> None:
            out["tasks"][task] = {**partial, "run": run_info}
            args.out.write_text(json.dumps(out, indent=1))
        return save

    tasks = {"arc": _arc, "gsm8k": _gsm8k}
    for task in args.tasks.split(","):
        if task not in tasks:
            p.error(f"unknown task {task}")
        name, result = tasks[task](args, settings, base, curve, on_round)
        out["tasks"][name] = {**result, "run": run_info}
        args.out.write_text(json.dumps(out, indent=1))
    run_info["wall_s"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(out, indent=1))
    from bench.plotting import plot_learning_curves

    plot_learning_curves(out["tasks"], args.out.with_name("distill_curve.png"))
    _summary(out["tasks"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
