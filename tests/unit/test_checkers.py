"""No-gold checkers: question kind, choice letters, code that runs its own asserts."""

import pytest

from selfevolve.scoring import checkers

ARC = "Q?\nA) x\nB) y\nC) z\nD) w\nAnswer:\nB\n\nNext question?\nA) a\nB) b\nC) c\nAnswer:"


@pytest.mark.parametrize("answer, letter", [
    ("C", "C"), ("C\n", "C"), (" (B) b", "B"), ("B) b", "B"), ("Answer: A", "A"),
    ("The answer is C.", "C"), ("D", None), ("I cannot tell", None), ("", None),
])
def test_choice_letter_accepts_only_offered_letters(answer, letter):
    assert checkers.choice_letter(answer, checkers.options(ARC)) == letter


def test_options_come_from_the_last_question_of_a_few_shot_prompt():
    assert checkers.options(ARC) == ("A", "B", "C")
    assert checkers.kind(ARC) == checkers.CHOICE
    assert checkers.kind("Write a python function to add two numbers.") == checkers.CODE
    assert checkers.kind("Tell me a story.") == checkers.TEXT


GOOD = "Here:\n```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n```"
BAD = "```python\ndef add(a, b):\n    return a - b\n\nassert add(1, 2) == 3\n```"
LOOP = "```python\nwhile True:\n    pass\n```"


@pytest.mark.parametrize("answer, ran, asserts, own_tests", [
    (GOOD, True, 1, True),
    (BAD, False, 1, False),
    ("```python\ndef f(:\n```", False, 0, False),
    ("```python\ndef f(x):\n    return x\nprint(f(2))\n```", True, 0, False),
])
def test_code_runs_its_own_asserts(answer, ran, asserts, own_tests):
    c = checkers.run_code(answer)
    assert (c.ran, c.asserts, c.passed_own_tests) == (ran, asserts, own_tests)


def test_code_that_never_ends_is_stopped():
    c = checkers.run_code(LOOP, checkers.Limits(timeout_s=1.0))
    assert c.has_code and not c.ran and c.error == "timeout"


def test_no_code_is_reported():
    assert not checkers.run_code("I would use a loop.").has_code


def test_run_many_checks_each_distinct_answer_as_run_code_does():
    answers = ["```python\ndef f():\n    return 1\nassert f() == 1\n```", "no code here",
               "```python\ndef g():\n    return 1\nassert g() == 2\n```", "no code here"]
    got = checkers.run_many(answers, workers=3)
    assert got == [checkers.run_code(a) for a in dict.fromkeys(answers)]
    assert [c.passed_own_tests for c in got] == [True, False, False]


def test_run_many_runs_the_checks_side_by_side(monkeypatch):
    """Three checks that each wait for the other two can only finish if they run at the same time."""
    import threading

    barrier = threading.Barrier(3, timeout=20)

    def waiting(answer, limits=checkers.DEFAULT_LIMITS):
        barrier.wait()
        return checkers.CodeCheck(True, True, 1)

    monkeypatch.setattr(checkers, "run_code", waiting)
    assert len(checkers.run_many(["a", "b", "c", "a"], workers=3)) == 3


def test_a_sandbox_that_cannot_be_made_credits_nothing_and_is_not_cached(monkeypatch):
    """Fail closed: no sandbox, no run, no pass; once the sandbox is back the same answer is checked."""
    from selfevolve.scoring import sandbox

    answer = GOOD.replace("add", "add_twice")
    monkeypatch.setattr(sandbox, "TOOL", "/nonexistent/bwrap")
    c = checkers.run_code(answer)
    assert c.has_code and not c.ran and not c.passed_own_tests
    assert c.error.startswith("sandbox unavailable:") and "bwrap" in c.error
    assert checkers.run_many([answer, "x"], workers=2)[0] == c
    monkeypatch.setattr(sandbox, "TOOL", "bwrap")
    assert checkers.run_code(answer).passed_own_tests


def test_code_checks_score_nothing_without_a_sandbox(monkeypatch):
    """A code answer whose check could not run scores as one that did not run, not as one that passed."""
    from selfevolve.scoring import sandbox, scoring

    prompt = "Write a python function add(a, b)."
    answer = GOOD.replace("add", "plus")
    with_box = scoring.score_responses(prompt, {"m": answer}, {"m": 0.5})["m"].correctness
    checkers._run_sandboxed.cache_clear()
    monkeypatch.setattr(sandbox, "TOOL", "/nonexistent/bwrap")
    without = scoring.score_responses(prompt, {"m": answer}, {"m": 0.5})["m"].correctness
    assert without < 0.5 < with_box


def test_the_sandbox_limits_come_from_the_settings():
    from selfevolve.config import Settings

    s = Settings(code_check_timeout_s=1.5, code_check_memory_mb=256, code_check_max_procs=4, code_check_file_mb=2)
    assert checkers.Limits.from_settings(s) == checkers.Limits(1.5, 256, 4, 2)
    assert checkers.Limits.from_settings(Settings()) == checkers.DEFAULT_LIMITS
