"""Distillation buffer: confident teacher responses per domain, ready at B, drained once."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.distill import buffer


def ev(qid, conf, domain="math", model="gpt-4", ok=True, prompt="q", answer="a"):
    return {"query_id": qid, "confidence": conf, "domain": domain, "model": model, "ok": ok,
            "prompt": prompt, "answer": answer}


@pytest.mark.parametrize(
    "event,kept",
    [
        (ev("1", 0.9), True),
        (ev("1", 0.8), False),  # strictly above theta
        (ev("1", 0.5), False),
        (ev("1", 0.95, ok=False), False),
        (ev("1", 0.95, model="student-1"), False),  # not a teacher
        (ev("1", 0.95, answer=""), False),
        (ev("1", 0.95, prompt=""), False),
    ],
)
def test_agg_keeps_only_confident_teacher_answers(event, kept):
    s = buffer.agg(buffer.initialize(0.8, {"gpt-4"}), event)
    assert buffer.result(s).get("math", 0) == int(kept)
    assert s["seen"] == 1


def test_ready_and_drain():
    s = buffer.initialize(0.5)
    for i in range(3):
        s = buffer.agg(s, ev(str(i), 0.9))
    s = buffer.agg(s, ev("x", 0.9, domain="law"))
    assert buffer.ready(s, "math", 3) and not buffer.ready(s, "math", 4) and not buffer.ready(s, "bio", 1)
    s2, items = buffer.drain(s, "math")
    assert [i["query_id"] for i in items] == ["0", "1", "2"]
    assert buffer.result(s2) == {"law": 1}
    assert buffer.result(s) == {"math": 3, "law": 1}  # pure: the old state is untouched


def test_same_query_keeps_latest_answer():
    s = buffer.initialize(0.5)
    s = buffer.agg(s, ev("1", 0.9, answer="old"))
    s = buffer.agg(s, ev("1", 0.95, answer="new"))
    _, items = buffer.drain(s, "math")
    assert [i["answer"] for i in items] == ["new"]


@settings(max_examples=80, deadline=None)
@given(st.floats(0, 1), st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1), st.sampled_from(["a", "b"]))))
def test_counts_match_a_direct_filter(theta, events):
    s = buffer.initialize(theta)
    for qid, conf, dom in events:
        s = buffer.agg(s, ev(str(qid), conf, domain=dom))
    # Each query's latest event decides whether it is buffered (a later unconfident retry doesn't evict).
    expected: dict[str, set] = {}
    for qid, conf, dom in events:
        if conf > theta:
            expected.setdefault(dom, set()).add(qid)
    assert buffer.result(s) == {d: len(q) for d, q in expected.items() if q}
    assert s["seen"] == len(events)
