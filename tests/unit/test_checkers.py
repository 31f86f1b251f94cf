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
