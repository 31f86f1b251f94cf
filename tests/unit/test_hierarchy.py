"""Unit tests for the hierarchy value and its model-event fold."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.evolution import hierarchy as hier
from selfevolve.errors import ValidationError


def _base() -> dict:
    return hier.from_roles({"gpt4": "supervisor", "claude": "teacher", "mistral": "student"})


@pytest.mark.parametrize(
    ("role", "up", "down"),
    [("student", "ta", None), ("ta", "teacher", "student"), ("teacher", "supervisor", "ta"),
     ("supervisor", None, "teacher")],
)
def test_up_down(role, up, down):
    assert hier.up(role) == up
    assert hier.down(role) == down


def test_role_accepts_enum_like_values():
    class FakeRole:
        value = "TA"
    assert hier.role_name(FakeRole()) == "ta"
    with pytest.raises(ValidationError):
        hier.role_name("intern")


@pytest.mark.parametrize(
    ("events", "model", "domain", "expected"),
    [
        ([], "mistral", 3, "student"),
        ([hier.event("promote", "mistral", 3, "student", "ta")], "mistral", 3, "ta"),
        ([hier.event("promote", "mistral", 3, "student", "ta")], "mistral", 4, "student"),
        ([hier.event("promote", "mistral", 3, "student", "ta")], "mistral", -1, "student"),
        ([hier.event("activate", "yi", 2, None, "student")], "yi", 2, "student"),
        ([hier.event("activate", "yi", 2, None, "student")], "yi", 1, None),
        ([hier.event("promote", "mistral", 3, "student", "ta"),
          hier.event("demote", "mistral", 3, "ta", "student")], "mistral", 3, "student"),
        ([hier.event("promote", "mistral", -1, "student", "ta")], "mistral", 7, "ta"),
    ],
)
def test_apply(events, model, domain, expected):
    assert hier.role(hier.replay(_base(), events), model, domain) == expected


def test_apply_does_not_mutate_and_counts():
    h = _base()
    before = json.dumps(h, sort_keys=True)
    h2 = hier.apply(h, hier.event("activate", "yi", 2, None, "student"))
    assert json.dumps(h, sort_keys=True) == before
    assert h2["applied"] == 1
    assert "yi" in hier.members(h2, 2) and "yi" not in hier.members(h2, 1)


def test_apply_rejects_bad_events():
    with pytest.raises(ValidationError):
        hier.apply(_base(), {"kind": "explode", "model": "x", "domain": 1})
    with pytest.raises(ValidationError):
        hier.apply(_base(), hier.event("promote", "x", 1, "student", None))


def test_from_catalogue_leaves_reserve_out():
    class Spec:
        def __init__(self, name, role, reserve):
            self.name, self.role, self.reserve = name, role, reserve

    h = hier.from_catalogue([Spec("a", "teacher", False), Spec("b", "student", True)])
    assert hier.members(h) == {"a": "teacher"}


_event = st.builds(
    lambda kind, m, d, r: hier.event(kind, m, d, None, r),
    st.sampled_from(["promote", "demote", "activate", "spawn"]),
    st.sampled_from(["a", "b/c", "d"]), st.integers(-1, 4), st.sampled_from(hier.ROLES))


@given(st.lists(_event, max_size=30))
def test_json_roundtrip_and_last_event_wins(events):
    h = hier.replay(_base(), events)
    assert json.loads(json.dumps(h)) == h
    assert h["applied"] == len(events)
    for e in events:
        last = [x for x in events if x["model"] == e["model"] and x["domain"] == e["domain"]][-1]
        assert hier.role(h, e["model"], e["domain"]) == last["new_role"]
