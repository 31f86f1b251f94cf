"""Fallback chains climb price tiers to the supervisor: tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.config import Settings
from selfevolve.models.fallback import fallback_chain


def spec(name, tier, role, cost, reserve=False) -> ModelSpec:
    return ModelSpec(name, "replay", role, tier, cost, reserve=reserve)


CAT = Catalogue([
    spec("stu", 0, Role.STUDENT, 0.0001), spec("stu2", 0, Role.STUDENT, 0.0002),
    spec("ta", 1, Role.TA, 0.0004), spec("ta-dear", 1, Role.TA, 0.0008),
    spec("ta-res", 1, Role.TA, 0.00001, reserve=True),
    spec("tea", 2, Role.TEACHER, 0.003), spec("sup", 3, Role.SUPERVISOR, 0.005),
])


@pytest.mark.parametrize(("catalogue", "start", "chain"), [
    (CAT, "stu", ["stu", "ta", "tea", "sup"]),
    (CAT, "stu2", ["stu2", "ta", "tea", "sup"]),
    (CAT, "ta-dear", ["ta-dear", "tea", "sup"]),
    (CAT, "ta-res", ["ta-res", "tea", "sup"]),
    (CAT, "tea", ["tea", "sup"]),
    (CAT, "sup", ["sup"]),
    # a reserve model holds no role: even a reserve "supervisor" escalates to the active one
    (Catalogue([*CAT, spec("sup-res", 2, Role.SUPERVISOR, 0.001, reserve=True)]), "sup-res", ["sup-res", "sup"]),
    # a promoted student is a supervisor now: its chain stops at itself
    (CAT.with_role("ta", Role.SUPERVISOR), "stu", ["stu", "ta"]),
    # the supervisor sits in a low tier: climbing runs out, the supervisor is appended last
    (CAT.with_role("sup", Role.TEACHER).with_role("ta-dear", Role.SUPERVISOR), "tea", ["tea", "sup", "ta-dear"]),
    # no supervisor at all: the chain ends at the top tier
    (CAT.with_role("sup", Role.TEACHER), "stu", ["stu", "ta", "tea", "sup"]),
])
def test_chains(catalogue: Catalogue, start: str, chain: list[str]) -> None:
    assert fallback_chain(catalogue, start) == chain


def test_shipped_catalogue_chain() -> None:
    cat = Catalogue.load(Settings().catalogue)
    assert fallback_chain(cat, "WizardLM/WizardLM-13B-V1.2") == [
        "WizardLM/WizardLM-13B-V1.2", "mistralai/mixtral-8x7b-chat", "claude-v1", "gpt-4-1106-preview"]


@st.composite
def catalogues(draw):
    n = draw(st.integers(1, 8))
    specs = [spec(f"m{i}", draw(st.integers(0, 4)), draw(st.sampled_from(list(Role))),
                  draw(st.floats(0, 1, allow_nan=False)), draw(st.booleans())) for i in range(n)]
    return Catalogue(specs)


@given(catalogues(), st.data())
def test_chain_properties(cat: Catalogue, data) -> None:
    start = data.draw(st.sampled_from(cat.names))
    chain = fallback_chain(cat, start)
    assert chain[0] == start and len(set(chain)) == len(chain)
    assert all(not cat.get(n).reserve for n in chain[1:])
    supervisors = [s.name for s in cat.by_role(Role.SUPERVISOR)]
    if supervisors:
        assert cat.get(chain[-1]).role == Role.SUPERVISOR
    else:
        assert cat.next_tier(chain[-1]) is None
    climbed = [n for n in chain if n not in supervisors]
    tiers = [cat.get(n).tier for n in climbed]
    assert tiers == sorted(set(tiers)) or len(tiers) <= 1
