"""Checks that need no gold: the question's kind, well-formed choice letters, code that runs its own asserts."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

CHOICE, CODE, TEXT = "choice", "code", "text"

_OPTION = re.compile(r"^\s*\(?([A-H])[).:]\s+\S", re.M)
_SHOT_END = re.compile(r"Answer:\s*\(?[A-H]\)?[ \t]*\n")
_LEAD_LETTER = re.compile(r"^\s*(?:answer\s*[:\-]?\s*)?\(?([A-H])\)?(?:[).:,\s]|$)", re.I)
_SAYS_LETTER = re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*\(?([A-H])\)?\b", re.I)
_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)
_CODE_ASK = re.compile(r"\b(python|function|def |write a (?:program|script))", re.I)


def options(prompt: str) -> tuple[str, ...]:
    """Letters offered by the last question of a (possibly few-shot) multiple-choice prompt."""
    last = _SHOT_END.split(prompt)[-1]
    return tuple(dict.fromkeys(_OPTION.findall(last)))


def kind(prompt: str) -> str:
    if len(options(prompt)) >= 2:
        return CHOICE
    return CODE if _CODE_ASK.search(prompt) else TEXT


def choice_letter(answer: str, offered: tuple[str, ...]) -> str | None:
    """The letter an answer commits to, if it is one of those offered; None when malformed."""
    for pattern in (_LEAD_LETTER, _SAYS_LETTER):
        m = pattern.search(answer)
        if m and m.group(1).upper() in offered:
            return m.group(1).upper()
    return None


def extract_code(answer: str) -> str:
    """Fenced code blocks joined, or the whole answer if it looks like bare code."""
    blocks = _FENCE.findall(answer)
    if blocks:
        return "\n\n".join(blocks)
    return answer if re.search(r"^\s*def \w+\(", answer, re.M) else ""


@dataclass(frozen=True)
class CodeCheck:
    has_code: bool
    ran: bool  # executed to the end without an exception within the time limit
    asserts: int  # assert statements the answer wrote for itself
    error: str = ""

    @property
    def passed_own_tests(self) -> bool:
        return self.ran and self.asserts > 0


def _limit_child() -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


@functools.lru_cache(maxsize=8192)
def run_code(answer: str, timeout_s: float = 3.0) -> CodeCheck:
    """Run the answer's code (its own examples and asserts) in an isolated subprocess with a timeout."""
    code = extract_code(answer)
    if not code.strip():
        return CodeCheck(False, False, 0, "no code")
    asserts = len(re.findall(r"^\s*assert\b", code, re.M))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "answer.py")
        with open(path, "w") as f:
            f.write(code)
        try:
            # -I: no user site or env vars; cwd is a throwaway dir; stdin closed so input() fails fast.
            p = subprocess.run([sys.executable, "-I", path], cwd=tmp, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout_s, preexec_fn=_limit_child,
                               env={"PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return CodeCheck(True, False, asserts, "timeout")
    err = p.stderr.decode(errors="replace").strip().splitlines()
    return CodeCheck(True, p.returncode == 0, asserts, err[-1] if err and p.returncode else "")


def run_many(answers: Iterable[str], workers: int = 4, timeout_s: float = 3.0) -> list[CodeCheck]:
    """run_code() of each distinct answer, `workers` subprocesses at a time; run_code's cache keeps the
    results. A scorer that checks a batch's answers one by one waits out each child in turn (and a
    looping answer for its whole time limit), while the children themselves barely use a core."""
    distinct = list(dict.fromkeys(answers))
    if workers <= 1 or len(distinct) <= 1:
        return [run_code(a, timeout_s) for a in distinct]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: run_code(a, timeout_s), distinct))
