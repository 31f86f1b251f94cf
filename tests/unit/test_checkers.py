"""No-gold checkers: question kind, choice letters, code that runs its own asserts."""

import pytest

from selfevolve import checkers

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
    c = checkers.run_code(LOOP, 1.0)
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

    def waiting(answer, timeout_s=3.0):
        barrier.wait()
        return checkers.CodeCheck(True, True, 1)

    monkeypatch.setattr(checkers, "run_code", waiting)
    assert len(checkers.run_many(["a", "b", "c", "a"], workers=3)) == 3
