"""Checks that need no gold: the question's kind, well-formed choice letters, code that runs its own asserts."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from selfevolve.config import DEFAULTS
from selfevolve.scoring import sandbox
from selfevolve.errors import SandboxError
from selfevolve.scoring.sandbox import Limits

log = logging.getLogger("selfevolve.scoring.checkers")

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


DEFAULT_LIMITS = Limits.from_settings(DEFAULTS)
_unavailable_logged = threading.Event()


def run_code(answer: str, limits: Limits = DEFAULT_LIMITS) -> CodeCheck:
    """Run the answer's code (its own examples and asserts) in the sandbox (selfevolve/scoring/sandbox.py).
    If no sandbox can be made the code is not run at all: the check says so and credits nothing."""
    code = extract_code(answer)
    if not code.strip():
        return CodeCheck(False, False, 0, "no code")
    asserts = len(re.findall(r"^\s*assert\b", code, re.M))
    try:
        return _run_sandboxed(code, asserts, limits)
    except SandboxError as e:
        if not _unavailable_logged.is_set():
            _unavailable_logged.set()
            log.error("code checks are off: %s", e)
        return CodeCheck(True, False, asserts, f"sandbox unavailable: {e}")


@functools.lru_cache(maxsize=8192)
def _run_sandboxed(code: str, asserts: int, limits: Limits) -> CodeCheck:
    # An exception is never cached: a sandbox that could not be made is tried again next time.
    r = sandbox.run_python(code, limits)
    if r.timed_out:
        return CodeCheck(True, False, asserts, "timeout")
    err = r.stderr_tail.strip().splitlines()
    error = (err[-1] if err else f"exit status {r.returncode}") if r.returncode else ""
    return CodeCheck(True, r.returncode == 0, asserts, error)


def run_many(answers: Iterable[str], workers: int = DEFAULTS.code_check_workers,
             limits: Limits = DEFAULT_LIMITS) -> list[CodeCheck]:
    """run_code() of each distinct answer, `workers` sandboxes at a time; run_code's cache keeps the
    results. A scorer that checks a batch's answers one by one waits out each child in turn (and a
    looping answer for its whole time limit), while the children themselves barely use a core."""
    distinct = list(dict.fromkeys(answers))
    if workers <= 1 or len(distinct) <= 1:
        return [run_code(a, limits) for a in distinct]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda a: run_code(a, limits), distinct))
