"""Held-out evaluation of a live round: reading gold and answers, scoring, baselines, the sign test, the report."""

from __future__ import annotations

import pytest

from selfevolve.distill import evaluate as ev

WINO = ("Please answer with the letter of the correct answer.\n\nThe trophy didn't fit in the case because _ was "
        "too big.\nA) trophy\nB) case\nPrint only a single choice  from \"A\" or \"B\" without explanation. Answer:")
SHOT = "Which is a metal?\nA) wood\nB) iron\nC) glass\nD) paper\nAnswer:\nB\n\n"
ARC = SHOT + "Which is a gas?\nA) ice\nB) steam\nC) rock\nD) sand\nAnswer:"
MATH = "Tom has 2 apples and buys 1,000 more. How many apples does he have?"
CODE = "Write a python function to add two numbers."


def q(gold: str, offered=("A", "B"), qid: str = "q", prompt: str = WINO, phase: str = "test", task: str = "wino"):
    return ev.Question(qid, prompt, gold, offered, phase, task)


@pytest.mark.parametrize("answer, offered, want", [
    ("B", ("A", "B"), "B"),
    ("B) case", ("A", "B"), "B"),
    ("(A)", ("A", "B"), "A"),
    ("The answer is B.", ("A", "B"), "B"),
    ("answer: a", ("A", "B"), "A"),
    ("C", ("A", "B"), None),  # not offered
    ("A trophy is big", ("A", "B"), "A"),  # the scorer's rule: a leading letter commits
    ("trophy", ("A", "B"), None),
    ("", ("A", "B", "C", "D"), None),
    ("So he has 1,002 apples.", (), "1002"),
    ("$12.50 in total", (), "12.5"),
    ("no idea", (), None),
])
def test_extract_reads_letters_with_the_scorers_rule_and_numbers_with_gsm8ks(answer, offered, want):
    assert ev.extract(answer, offered) == want


@pytest.mark.parametrize("prompt, responses, correct, want", [
    (WINO, {"m1": "B", "m2": "B\n", "m3": "A"}, {"m1": 1.0, "m2": 1.0, "m3": 0.0}, "B"),
    (WINO, {"m1": "A)", "m2": "I do"}, {"m1": 1.0, "m2": 0.0}, "A"),
    (ARC, {"m1": "B", "m2": "C"}, {"m1": 1.0, "m2": 1.0}, None),  # right models disagree: unreadable
    (ARC, {"m1": "B", "m2": "B", "m3": "C"}, {"m1": 1.0, "m2": 1.0, "m3": 1.0}, "B"),  # majority
    (WINO, {"m1": "B"}, {"m1": 0.0}, None),  # nobody right
    (WINO, {"m1": "I cannot say"}, {"m1": 1.0}, None),  # right but no letter
    (MATH, {"m1": "2 + 1000 = 1002\nHe has 1,002."}, {"m1": 1.0}, "1002"),
    (CODE, {"m1": "def add(a, b):\n    return a + b"}, {"m1": 1.0}, None),  # code needs its tests run
])
def test_gold_answer_is_what_the_models_graded_right_agree_on(prompt, responses, correct, want):
    assert ev.gold_answer(prompt, responses, correct) == want


def test_question_keeps_the_last_questions_letters_and_drops_unjudgeable_ones():
    arc = ev.question("q1", ARC, {"m": "B"}, {"m": 1.0}, "test", "arc")
    assert arc == ev.Question("q1", ARC, "B", ("A", "B", "C", "D"), "test", "arc")
    assert ev.question("q2", MATH, {"m": "so 1002"}, {"m": 1.0}).offered == ()
    assert ev.question("q3", CODE, {"m": "def f(): pass"}, {"m": 1.0}) is None


def test_held_out_drops_trained_ids_and_prompts_prefers_test_and_caps():
    cands = [q("A", qid="a3", phase="warmup"), q("A", qid="t2", prompt="other"), q("B", qid="t1", prompt="p1"),
             q("B", qid="t0", prompt="trained text"), q("A", qid="t9", prompt="x")]
    got = ev.held_out(cands, trained_ids={"t9"}, trained_digests={ev.prompt_digest("trained text")}, limit=10)
    assert [c.query_id for c in got] == ["t1", "t2", "a3"]
    assert [c.query_id for c in ev.held_out(cands, (), (), limit=2)] == ["t0", "t1"]


@pytest.mark.parametrize("answers, golds, want_ok, want_picks", [
    (["B", "A) x", "??"], ["B", "B", "A"], (True, False, False), ("B", "A", None)),
    (["The answer is A", "B"], ["A", "B"], (True, True), ("A", "B")),
    ([], [], (), ()),
])
def test_score_judges_each_answer_against_its_gold(answers, golds, want_ok, want_picks):
    s = ev.score(answers, [q(g) for g in golds])
    assert (s.ok, s.picks) == (want_ok, want_picks)
    assert s.correct == sum(want_ok) and s.n == len(golds)


def test_score_refuses_answers_that_do_not_line_up():
    with pytest.raises(ValueError):
        ev.score(["A"], [q("A"), q("B")])


def test_baselines_chance_and_always_one_letter():
    qs = [q("B"), q("B"), q("A"), q("C", offered=("A", "B", "C", "D"))]
    assert ev.chance(qs) == pytest.approx((0.5 * 3 + 0.25) / 4)
    assert ev.one_letter_baseline(qs) == ("B", 2)
    assert ev.chance([q("7", offered=())]) is None and ev.one_letter_baseline([]) is None


@pytest.mark.parametrize("before, after, want", [
    ("1100", "1100", (0, 0, 1.0)),
    ("0000000000", "1111111111", (10, 0, 2 / 2**10)),
    ("10", "01", (1, 1, 1.0)),
    ("000", "110", (2, 0, 0.5)),
    ("1110", "0001", (1, 3, 0.625)),
])
def test_sign_test_counts_fixed_and_broken_answers(before, after, want):
    b = ev.Score(tuple(c == "1" for c in before), ())
    a = ev.Score(tuple(c == "1" for c in after), ())
    fixed, broken, p = ev.sign_test(b, a)
    assert (fixed, broken) == want[:2] and p == pytest.approx(want[2])


@pytest.mark.parametrize("losses, want", [
    ([0.627, 0.7, 0.790], "rose"), ([0.581, 0.5, 0.422], "fell"), ([0.5, 0.502], "stayed flat"), ([0.5], "stayed flat"),
])
def test_loss_trend_says_which_way_the_loss_went(losses, want):
    assert ev.loss_trend(losses) == want


def _scores(before: str, after: str, golds: str):
    qs = [q(g, qid=f"q{i:02d}") for i, g in enumerate(golds)]
    pick = lambda bits: [g if c == "1" else ("A" if g == "B" else "B") for c, g in zip(bits, golds)]
    return qs, ev.score(pick(before), qs), ev.score(pick(after), qs)


@pytest.mark.parametrize("before, after, phrase", [
    ("1" * 10 + "0" * 10, "1" * 9 + "0" * 11, "training made the student worse"),
    ("1" * 10 + "0" * 10, "1" * 10 + "0" * 10, "training did not improve the student"),
    ("1" * 10 + "0" * 10, "1" * 11 + "0" * 9, "training did not measurably improve the student"),
    ("0" * 20, "1" * 12 + "0" * 8, "training helped on held-out questions"),
])
def test_verdict_says_plainly_whether_the_round_helped(before, after, phrase):
    _, b, a = _scores(before, after, "AB" * 10)
    line = ev.verdict(b, a, steps=4, examples=20)
    assert line.startswith(phrase)
    assert ("far too little training" in line) == (phrase != "training helped on held-out questions")


def test_report_gives_counts_chance_loss_and_verdict():
    qs, b, a = _scores("1" * 12 + "0" * 12, "1" * 11 + "0" * 13, "B" * 14 + "A" * 10)
    lines = ev.report_lines("0", qs, b, a, [0.627, 0.7, 0.75, 0.790], batch_size=4, examples=20)
    text = "\n".join(lines)
    assert lines[0].startswith("student on 24 held-out questions of domain 0 (24 wino)")
    assert "12/24 (50%) before, 11/24 (46%) after" in lines[0]
    assert "chance for 2-option questions is 50%; always answering B would score 14/24 (58%)" in text
    assert "0.627 0.700 0.750 0.790; it rose (0.627 -> 0.790" in text
    assert "neither score beats always answering B, which gets 14/24 (58%)" in text
    assert "training made the student worse" in lines[-1] and "fewer than" not in text


def test_report_names_a_student_that_gives_one_answer_to_nearly_every_question():
    qs = [q(g, qid=f"q{i}") for i, g in enumerate("AAABBBBBBB")]
    b, a = ev.score(list("AAABBBBBBB"), qs), ev.score(["B"] * 8 + ["x", " "], qs)
    lines = ev.report_lines("0", qs, b, a, [0.5, 0.4], 4, 20)
    picks = next(x for x in lines if x.startswith("answers before"))
    assert picks == ("answers before: B 7, A 3; after: B 8, unreadable 2 (1 of them empty) "
                     "(the same answer, B, to 8 of 10 questions)")
    assert not any(x.startswith("neither score") for x in lines)  # 10/10 before beats always-B's 7/10


def test_report_says_when_too_few_or_no_questions_can_be_judged():
    qs, b, a = _scores("10", "01", "AB")
    assert any("only 2 held-out questions" in x for x in ev.report_lines("3", qs, b, a, [1.0], 4, 8))
    empty = ev.report_lines("3", [], ev.score([], []), ev.score([], []), [1.0], 4, 8)
    assert len(empty) == 1 and "no held-out question of domain 3" in empty[0]


class _Tok:
    """Chat ids are the prompt's characters' codes; decode maps ids back."""
    pad_token_id = 0
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class _Model:
    def __init__(self):
        self.calls = []

    def generate(self, ids, attention_mask, **kw):
        import torch

        self.calls.append((ids.tolist(), attention_mask.tolist(), kw))
        new = torch.tensor([[ord(" "), ord("B"), 0]] * ids.shape[0])  # the last token is padding
        return torch.cat([ids, new], 1)


class _SkipPadTok(_Tok):
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == self.pad_token_id))


def test_answer_all_cuts_prompts_like_training_left_pads_batches_and_decodes_greedily():
    model = _Model()
    got = ev.answer_all(model, _SkipPadTok(), ["abcdef", "xy", "pq"], max_prompt_tokens=3, max_new_tokens=5,
                        batch_size=2)
    assert got == ["B", "B", "B"]
    (ids1, mask1, kw1), (ids2, mask2, _) = model.calls
    assert ids1 == [[ord(c) for c in "def"], [0] + [ord(c) for c in "xy"]]
    assert mask1 == [[1, 1, 1], [0, 1, 1]]
    assert ids2 == [[ord(c) for c in "pq"]] and mask2 == [[1, 1]]
    assert kw1["do_sample"] is False and kw1["max_new_tokens"] == 5
