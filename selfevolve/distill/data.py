"""Distillation examples from real teacher outputs: RouterBench ARC-Challenge (Hu et al., 2024) and RouteLLM GSM8K.

Quality-metric targets are what the project's gold-free scorer (selfevolve.scoring.scoring) gives the teacher's answer
among all the answers the stream saw for that query; gold labels are kept on each example for the benchmark's
evaluation and never feed a training target.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfevolve.scoring import scoring
from selfevolve.errors import ConfigError

TEACHER = "gpt-4-1106-preview"
SECOND_TEACHER_GSM8K = "mistralai/Mixtral-8x7B-Instruct-v0.1"
PRIOR = 0.6  # every answering model's prior accuracy for the scorer's vote: no gold-derived per-model priors
GSM8K_TRAIN = 800  # the RouteLLM responses cover GSM8K test only: first 800 train the student, the rest test it
LETTERS = ("A", "B", "C", "D")
_LETTER = re.compile(r"\b([ABCD])\b")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")
_OPTION = re.compile(r"^([ABCD])\) (.+)$", re.M)


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str  # the teacher's final answer: response loss target
    steps: tuple[str, ...]  # the teacher's intermediate steps: reasoning loss targets
    metrics: tuple[float, float, float, float]  # relevance, correctness, completeness, clarity of the teacher answer
    domain: str
    gold: str | None = None  # evaluation only


def parse_letter(text: str) -> str | None:
    m = _LETTER.search(text.strip())
    return m.group(1) if m else None


def last_number(text: str) -> str | None:
    """The last number in text, normalised ("1,000.00" -> "1000"), the GSM8K scoring rule."""
    nums = _NUMBER.findall(text.replace("$", ""))
    if not nums:
        return None
    n = nums[-1].replace(",", "").rstrip(".")
    try:
        f = float(n)
    except ValueError:
        return None
    return str(int(f)) if f == int(f) else str(f)


def split_steps(answer: str) -> tuple[tuple[str, ...], str]:
    """(intermediate steps, final answer): one step per non-empty line, the last line is the answer."""
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        return (), ""
    return tuple(lines[:-1]), lines[-1]


def arc_options(prompt: str) -> dict[str, str]:
    """The answer options of an ARC question, by letter ("A) text" lines)."""
    return {m.group(1): m.group(2).strip() for m in _OPTION.finditer(prompt)}


def spelled_out(letter: str, options: dict[str, str]) -> str:
    """A chosen letter written out as its option, "B) whale": the same answer with the content a small
    student must tie to the letter (a bare letter teaches it only the letters' frequencies)."""
    return f"{letter}) {options[letter]}" if letter in options else letter


def strip_arc_prompt(prompt: str) -> str:
    """The actual question of a RouterBench ARC prompt. The prompt carries ~5 solved few-shot questions first;
    they quintuple the tokens a 135M student must read on 2 CPU cores and the chat-tuned model answers the
    bare question with its instruction just as well, so only the last block is kept."""
    block = prompt.strip().split("\n\n")[-1]
    return re.sub(r"\s*Answer:\s*$", "", block).strip()


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"missing data file {path}")
    csv.field_size_limit(1 << 30)
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _literal(cell: str) -> str:
    try:
        v = ast.literal_eval(cell) if cell else ""
    except (ValueError, SyntaxError):
        return cell
    return str(v[0]) if isinstance(v, list) and v else str(v)


def arc_examples(data_dir: Path, split: str, limit: int | None = None, spell_out: bool = False) -> list[Example]:
    """ARC-Challenge with GPT-4 as teacher; metric targets: the scorer's vote over all 11 RouterBench answers.
    spell_out: the target is the teacher's letter written out as its option (see spelled_out).
    Gold (evaluation only): the letter of a model that RouterBench scored right."""
    rows = _read_csv(Path(data_dir) / "routerbench-0shot" / f"arc_challenge_{split}.csv")
    models = [k for k in rows[0] if k and f"{k}|model_response" in rows[0]]
    out = []
    for row in rows[: limit or None]:
        answer = _literal(row[f"{TEACHER}|model_response"]).strip()
        letter = parse_letter(answer)
        prompt = strip_arc_prompt(_literal(row["prompt"]))
        answers = {m: _literal(row[f"{m}|model_response"]) for m in models}
        s = scoring.score_responses(prompt, answers, {m: PRIOR for m in models})[TEACHER]
        gold = None
        for m in [TEACHER, *models]:
            # An empty score is a model that returned nothing: counted wrong (shared/README).
            if row.get(m) and float(row[m]) == 1.0:
                gold = parse_letter(_literal(row[f"{m}|model_response"]))
                if gold:
                    break
        metrics = (s.relevance, s.correctness, s.completeness, s.clarity)
        target = spelled_out(letter, arc_options(prompt)) if spell_out and letter else letter or answer
        out.append(Example(prompt, target, (), metrics, "arc", gold))
    return out


def gsm8k_examples(data_dir: Path, split: str, limit: int | None = None) -> list[Example]:
    """GSM8K with GPT-4's step-by-step answers as teacher; metric targets from the scorer over the GPT-4 and
    Mixtral answers, except correctness: the scorer only matches whole texts outside multiple choice, so the
    two teachers' final numbers are compared instead (the same vote). Gold (evaluation only): '#### n'."""
    base = Path(data_dir) / "routellm-gsm8k"
    rows = _read_csv(base / "gsm8k_responses.csv")
    with (base / "test.jsonl").open() as f:
        gold_rows = [json.loads(line) for line in f]
    golds = {g["question"]: g["answer"].split("####")[-1].strip().replace(",", "") for g in gold_rows}
    rows = rows[:GSM8K_TRAIN] if split == "train" else rows[GSM8K_TRAIN:]
    out = []
    for row in rows[: limit or None]:
        answer = row[f"{TEACHER}_response"]
        steps, final = split_steps(answer)
        num = last_number(answer)
        agree = num is not None and num == last_number(row[f"{SECOND_TEACHER_GSM8K}_response"])
        answers = {TEACHER: answer, SECOND_TEACHER_GSM8K: row[f"{SECOND_TEACHER_GSM8K}_response"]}
        s = scoring.score_responses(row["prompt"], answers, {m: PRIOR for m in answers})[TEACHER]
        # Two voters of accuracy PRIOR: agreeing makes the shared answer likelier, disagreeing a coin flip.
        corr = PRIOR**2 / (PRIOR**2 + (1 - PRIOR) ** 2) if agree else (0.5 if num else 0.0)
        metrics = (s.relevance, corr, s.completeness, s.clarity)
        out.append(Example(row["prompt"].strip(), final, steps, metrics, "gsm8k", golds.get(row["prompt"])))
    return out


def encode(ex: Example, tokenizer: Any, max_prompt: int, max_answer: int) -> dict[str, list[int]]:
    """Token ids of chat(prompt) + steps + final answer + eos, with each token's role:
    -2 prompt, -1 response, k >= 0 the k-th reasoning step."""
    from selfevolve.distill.lm import chat_ids

    prompt = chat_ids(tokenizer, ex.prompt)[-max_prompt:]
    ids, role = list(prompt), [-2] * len(prompt)
    for k, step in enumerate(ex.steps):
        t = tokenizer(step + "\n", add_special_tokens=False)["input_ids"]
        ids += t
        role += [k] * len(t)
    t = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids += t
    role += [-1] * len(t)
    # Keep the final answer whole; if too long, cut the steps from the end (the answer must stay learnable).
    n_ans = len(ids) - len(prompt)
    if n_ans > max_answer:
        cut = n_ans - max_answer
        keep_steps = len(prompt) + max(0, (n_ans - len(t)) - cut)
        ids = ids[:keep_steps] + ids[-len(t):]
        role = role[:keep_steps] + role[-len(t):]
    return {"input_ids": ids, "role": role}


def collate(batch: list[dict[str, list[int]]], metrics: list[tuple[float, ...]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors, already shifted for next-token prediction (targets/response_mask/step_ids are
    aligned with logits[:, :-1])."""
    T = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    role = torch.full((len(batch), T), -2, dtype=torch.long)
    att = torch.zeros((len(batch), T), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        role[i, :n] = torch.tensor(b["role"])
        att[i, :n] = 1
    tgt_role = role[:, 1:]
    return {
        "input_ids": ids,
        "attention_mask": att,
        "targets": ids[:, 1:],
        "response_mask": tgt_role == -1,
        "step_ids": torch.where(tgt_role >= 0, tgt_role, torch.full_like(tgt_role, -1)),
        "metrics": torch.tensor(metrics, dtype=torch.float32),
    }
