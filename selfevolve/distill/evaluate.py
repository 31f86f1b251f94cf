"""Held-out evaluation of a distilled student: the same questions, answered greedily before and after a round,
judged against gold with the project's answer rules. Gold only reports here; it never decides anything.

Pure functions over answers and gold, plus one generation call given a model object (the caller loads it).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from selfevolve.scoring import checkers

EVAL_MAX_NEW_TOKENS = 8  # a choice letter is committed in the first few tokens; decoding is the slow part on a CPU
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Question:
    """One held-out question: its gold answer (a choice letter or a number) and the letters it offers."""

    query_id: str
    prompt: str
    gold: str
    offered: tuple[str, ...] = ()  # () for a numeric answer
    phase: str = ""  # the replay phase that asked it (test questions are preferred)
    task: str = ""  # the benchmark it came from, for the report


@dataclass(frozen=True)
class Score:
    """Judged answers to a list of questions, in their order."""

    ok: tuple[bool, ...]
    picks: tuple[str | None, ...]  # what each answer committed to (letter or number), None when unreadable
    empty: int = 0  # answers with no text at all (the model ended its turn at once): unreadable too

    @property
    def correct(self) -> int:
        return sum(self.ok)

    @property
    def n(self) -> int:
        return len(self.ok)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def extract(answer: str, offered: tuple[str, ...]) -> str | None:
    """What an answer commits to: the scorer's choice letter when letters are offered, else its last number."""
    from selfevolve.distill.data import last_number  # data.py loads torch: only when a number is wanted

    if offered:
        return checkers.choice_letter(answer, offered)
    return last_number(answer)


def gold_answer(prompt: str, responses: Mapping[str, str], correct: Mapping[str, float]) -> str | None:
    """The answer the models graded right commit to (most of them; None on a tie, when none was right, or for
    code and free text, which these rules cannot judge). Gold labels: for reporting only."""
    kind = checkers.kind(prompt)
    if kind == checkers.CODE:
        return None
    offered = checkers.options(prompt) if kind == checkers.CHOICE else ()
    keys = [extract(responses[m], offered) for m, c in correct.items() if c >= 1.0 and m in responses]
    counts = Counter(k for k in keys if k is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def question(query_id: str, prompt: str, responses: Mapping[str, str], correct: Mapping[str, float],
             phase: str = "", task: str = "") -> Question | None:
    """A judgeable held-out question, or None when its gold cannot be read."""
    gold = gold_answer(prompt, responses, correct)
    if gold is None:
        return None
    offered = checkers.options(prompt) if checkers.kind(prompt) == checkers.CHOICE else ()
    return Question(query_id, prompt, gold, offered, phase, task)


def prompt_digest(prompt: str) -> str:
    """A prompt's fingerprint, so a round record names its training prompts without copying them."""
    return hashlib.sha256(prompt.encode()).hexdigest()


def held_out(candidates: Iterable[Question], trained_ids: Iterable[str], trained_digests: Iterable[str],
             limit: int) -> list[Question]:
    """Up to `limit` questions that no training example used (by query id or by prompt_digest of its text),
    test-phase questions first, then by query id: the same selection for the same history."""
    ids, digests = set(trained_ids), set(trained_digests)
    fresh = [q for q in candidates if q.query_id not in ids and prompt_digest(q.prompt) not in digests]
    fresh.sort(key=lambda q: (q.phase != "test", q.query_id))
    return fresh[:limit]


def score(answers: Sequence[str], questions: Sequence[Question]) -> Score:
    """Judge each answer against its question's gold with the same rules."""
    if len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    picks = tuple(extract(a, q.offered) for a, q in zip(answers, questions))
    return Score(tuple(p is not None and p == q.gold for p, q in zip(picks, questions)), picks,
                 sum(1 for a in answers if not a.strip()))


def chance(questions: Sequence[Question]) -> float | None:
    """Expected accuracy of a uniform guess among the offered letters; None when some question is numeric."""
    if not questions or any(not q.offered for q in questions):
        return None
    return sum(1.0 / len(q.offered) for q in questions) / len(questions)


def one_letter_baseline(questions: Sequence[Question]) -> tuple[str, int] | None:
    """(letter, correct count) of always answering the commonest gold letter: the score of a student that
    has learnt only which letter is frequent. None for numeric questions."""
    if not questions or any(not q.offered for q in questions):
        return None
    return Counter(q.gold for q in questions).most_common(1)[0]


def sign_test(before: Score, after: Score) -> tuple[int, int, float]:
    """(fixed, broken, two-sided p): questions wrong before and right after, the reverse, and the exact
    binomial probability of a split at least this uneven if training changed nothing."""
    fixed = sum(1 for b, a in zip(before.ok, after.ok) if a and not b)
    broken = sum(1 for b, a in zip(before.ok, after.ok) if b and not a)
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return fixed, broken, 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return fixed, broken, min(1.0, 2 * tail)


def loss_trend(losses: Sequence[float]) -> str:
    """'fell', 'rose' or 'stayed flat': last step against first, within 1% counts as flat."""
    if len(losses) < 2 or abs(losses[-1] - losses[0]) <= 0.01 * abs(losses[0]):
        return "stayed flat"
    return "fell" if losses[-1] < losses[0] else "rose"


def answer_all(model: Any, tokenizer: Any, prompts: Sequence[str], max_prompt_tokens: int,
               max_new_tokens: int = EVAL_MAX_NEW_TOKENS, batch_size: int = 8) -> list[str]:
    """Greedy answers, each prompt cut to its last max_prompt_tokens chat tokens exactly as training cuts it
    (data.encode). Batches are left-padded under an attention mask: a 135M model on a CPU spends its time on
    per-step overhead, which a batch shares (about 4x faster on 2 cores, the same answers)."""
    import torch

    from selfevolve.distill.lm import chat_ids

    out: list[str] = []
    for lo in range(0, len(prompts), batch_size):
        cut = [chat_ids(tokenizer, p)[-max_prompt_tokens:] for p in prompts[lo:lo + batch_size]]
        width = max(map(len, cut))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in cut])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in cut])
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        out += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in seq]
    return out


def serving_lm(student: Any) -> Any:
    """The causal LM a distilled student serves with: its LoRA merged into the base, as the local worker does."""
    lm = student.lm.merge_and_unload() if hasattr(student.lm, "merge_and_unload") else student.lm
    lm.eval()
    return lm


# --- The report: plain sentences a reader can check against the counts. ---


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else f"{k}/0"


def _picks(s: Score) -> str:
    """What the answers committed to, commonest first; notes a student that gives nearly everyone one answer."""
    counts = Counter("unreadable" if p is None else p for p in s.picks)
    text = ", ".join(f"{k} {v}" + (f" ({s.empty} of them empty)" if k == "unreadable" and s.empty else "")
                     for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    top = Counter(p for p in s.picks if p is not None).most_common(1)
    if top and s.n >= 5 and top[0][1] >= 0.8 * s.n:
        text += f" (the same answer, {top[0][0]}, to {top[0][1]} of {s.n} questions)"
    return text


def _tasks(questions: Sequence[Question]) -> str:
    counts = Counter(q.task or "unlabelled" for q in questions)
    return ", ".join(f"{v} {k}" for k, v in counts.most_common())


def baseline_lines(questions: Sequence[Question]) -> list[str]:
    """What a student that knows nothing scores on these questions."""
    c, one = chance(questions), one_letter_baseline(questions)
    if c is None or one is None:
        return ["chance: these questions want numbers, which a guess almost never hits"]
    sizes = {len(q.offered) for q in questions}
    what = (f"{sizes.pop()}-option questions" if len(sizes) == 1
            else "these questions (a guess among each one's options)")
    return [f"chance for {what} is {c:.0%}; always answering {one[0]} would score {_pct(one[1], len(questions))}"]


def loss_line(losses: Sequence[float], batch_size: int) -> str:
    """The round's loss curve as it was: every step, or first / lowest / last when there are many."""
    if not losses:
        return "training loss: not recorded"
    shown = " ".join(f"{x:.3f}" for x in losses) if len(losses) <= 8 else \
        f"{losses[0]:.3f} ... lowest {min(losses):.3f} ... {losses[-1]:.3f}"
    return (f"training loss over {len(losses)} steps of {batch_size} answers: {shown}; it {loss_trend(losses)} "
            f"({losses[0]:.3f} -> {losses[-1]:.3f}; each step is a different batch, so a few steps are noisy)")


def verdict(before: Score, after: Score, steps: int, examples: int) -> str:
    """One plain sentence: did the round help on held-out questions? Only a sign test below 5% says yes."""
    n, b, a = before.n, before.correct, after.correct
    fixed, broken, p = sign_test(before, after)
    moved = f"{fixed} answers fixed, {broken} broken"
    if p < SIGNIFICANCE and a > b:
        return f"training helped on held-out questions: {_pct(b, n)} -> {_pct(a, n)}, {moved} (sign test p={p:.3f})"
    if a < b:
        head = f"training made the student worse on held-out questions: {_pct(b, n)} -> {_pct(a, n)}, {moved}"
    elif a == b:
        head = f"training did not improve the student on held-out questions: {_pct(b, n)} both times, {moved}"
    else:
        head = (f"training did not measurably improve the student on held-out questions: {moved} is within "
                f"chance on {n} questions (sign test p={p:.2f})")
    return (f"{head}; a {steps}-step round on {examples} teacher answers shows the loop running (spawn, train, "
            f"hot-load) but is far too little training to teach a 135M model this task")


def report_lines(domain: str, questions: Sequence[Question], before: Score, after: Score,
                 losses: Sequence[float], batch_size: int, examples: int, min_questions: int = 20) -> list[str]:
    """The live round's held-out report, one printable line each."""
    n = len(questions)
    if n == 0:
        return [f"no held-out question of domain {domain} has a gold answer these rules can judge "
                "(a choice letter or a number); no accuracy to report"]
    lines = [f"student on {n} held-out questions of domain {domain} ({_tasks(questions)}), none of them among "
             f"its {examples} training answers: {_pct(before.correct, n)} before, {_pct(after.correct, n)} after"]
    if n < min_questions:
        lines.append(f"only {n} held-out questions could be judged; fewer than {min_questions} say little")
    lines += baseline_lines(questions)
    one = one_letter_baseline(questions)
    if one is not None and max(before.correct, after.correct) <= one[1]:
        lines.append(f"neither score beats always answering {one[0]}, which gets {_pct(one[1], n)}")
    lines.append(f"answers before: {_picks(before)}; after: {_picks(after)}")
    lines.append(loss_line(losses, batch_size))
    lines.append(verdict(before, after, len(losses), examples))
    return lines
