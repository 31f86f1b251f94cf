"""Catalogue: roles, YAML loading and its errors, immutable changes, tiers and cost estimates."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfevolve.models.catalogue import Catalogue, ModelSpec, Role, estimate_cost
from selfevolve.config import Settings
from selfevolve.errors import ConfigError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench-0shot"
DATA = Path(__file__).resolve().parents[2] / "selfevolve" / "data"


def spec(name, tier, role=Role.STUDENT, cost=None, reserve=False, **kw) -> ModelSpec:
    return ModelSpec(name, "replay", role, tier, cost, reserve=reserve, **kw)


@pytest.mark.parametrize(("low", "high"), [(Role.STUDENT, Role.TA), (Role.TA, Role.TEACHER),
                                           (Role.TEACHER, Role.SUPERVISOR), (Role.STUDENT, Role.SUPERVISOR)])
def test_role_order(low: Role, high: Role) -> None:
    assert low < high and high > low and low <= high and not high <= low and low != high


def test_role_sort_and_parse() -> None:
    assert sorted(["teacher", Role.SUPERVISOR, Role.STUDENT, Role.TA], key=Role.parse) == list(Role)
    assert Role.parse("TA") is Role.TA and str(Role.TEACHER) == "teacher"
    with pytest.raises(ConfigError, match="unknown role"):
        Role.parse("dean")


def test_shipped_catalogue() -> None:
    cat = Catalogue.load(Settings().catalogue)
    assert len(cat) == 12
    assert [s.name for s in cat.by_role("supervisor")] == ["gpt-4-1106-preview"]
    assert {s.name for s in cat.reserve()} == {"mistralai/mistral-7b-chat", "meta/code-llama-instruct-34b-chat",
                                               "smollm2-135m"}
    assert {s.backend for s in cat.active()} == {"replay"}
    local = cat.get("smollm2-135m")
    assert local.backend == "local" and local.role == Role.STUDENT and local.reserve
    for role in Role:
        assert cat.by_role(role), f"no active {role}"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data absent")
def test_shipped_roles_follow_real_train_cost() -> None:
    from selfevolve.data.routerbench import load_dir

    train = load_dir(SHARED, ("train",))
    cat = Catalogue.load(DATA / "catalogue.yaml")
    bands = [(0.0002, Role.STUDENT, 0), (0.001, Role.TA, 1), (0.005, Role.TEACHER, 2),
             (float("inf"), Role.SUPERVISOR, 3)]
    for model in train.models:
        mean = train.total_cost(model) / len(train)
        s = cat.get(model)
        assert s.cost_per_call == pytest.approx(mean, rel=1e-3), model
        role, tier = next((r, t) for top, r, t in bands if mean < top)
        assert (s.role, s.tier) == (role, tier), model


def test_example_openai_catalogue() -> None:
    cat = Catalogue.load(DATA / "catalogue.openai.example.yaml")
    gpt = cat.get("gpt-4o")
    assert gpt.backend == "openai" and gpt.options["base_url"].startswith("https://")
    assert estimate_cost(gpt, 1000, 1000) == pytest.approx(0.0125)


@pytest.mark.parametrize(("entry", "message"), [
    ("- {backend: replay, role: ta, tier: 1}", r"models\[0\]: missing 'name'"),
    ("- {name: m1, backend: grpc, role: ta, tier: 1}", r"\(m1\): backend 'grpc'"),
    ("- {name: m2, backend: replay, role: dean, tier: 1}", r"\(m2\): unknown role"),
    ("- {name: m3, backend: replay, role: ta, tier: -1}", r"\(m3\): 'tier'"),
    ("- {name: m4, backend: replay, role: ta, tier: 1, cost_per_call: -2}", r"\(m4\): 'cost_per_call'"),
    ("- {name: m5, backend: replay, role: ta, tier: 1, cost: 2}", r"\(m5\): unknown keys \['cost'\]"),
    ("- {name: m6, backend: replay, role: ta, tier: 1, reserve: maybe}", r"\(m6\): 'reserve'"),
    ("- {name: d, backend: replay, role: ta, tier: 1}\n  - {name: d, backend: replay, role: ta, tier: 1}", "twice"),
    ("- 3", r"models\[0\]: expected a mapping"),
])
def test_bad_entries_name_the_entry(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text("models:\n  " + entry + "\n")
    with pytest.raises(ConfigError, match=message):
        Catalogue.load(path)


@pytest.mark.parametrize("text", ["models: {a: 1}", "- a", "models: [", ""])
def test_bad_documents(tmp_path: Path, text: str) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        Catalogue.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Catalogue.load(tmp_path / "none.yaml")


def test_changes_return_new_catalogues() -> None:
    cat = Catalogue([spec("s", 0), spec("r", 0, reserve=True), spec("sup", 3, Role.SUPERVISOR)])
    promoted = cat.with_role("s", "ta")
    assert promoted.get("s").role == Role.TA and promoted.get("s").tier == 0
    assert cat.get("s").role == Role.STUDENT  # original untouched
    woken = cat.activate("r", Role.STUDENT)
    assert "r" in [s.name for s in woken.active()] and "r" not in [s.name for s in cat.active()]
    with pytest.raises(ConfigError, match="already active"):
        woken.activate("r", Role.STUDENT)
    with pytest.raises(ConfigError, match="not in the catalogue"):
        cat.with_role("ghost", "ta")
    assert cat.by_role(Role.STUDENT) == (cat.get("s"),)  # reserve holds no role yet


def test_spec_options_are_copied() -> None:
    opts = {"max_new_tokens": 8}
    s = spec("x", 0, options=opts)
    opts["max_new_tokens"] = 99
    assert s.options["max_new_tokens"] == 8 and hash(s) == hash(spec("x", 0, options={"a": 1}))


CAT = Catalogue([
    spec("s-cheap", 0, cost=0.0001), spec("s-dear", 0, cost=0.0002),
    spec("ta-dear", 1, Role.TA, cost=0.0009), spec("ta-cheap", 1, Role.TA, cost=0.0003),
    spec("ta-asleep", 1, Role.TA, cost=0.00001, reserve=True),
    spec("sup", 3, Role.SUPERVISOR, cost=0.005),
])


@pytest.mark.parametrize(("name", "expected"), [
    ("s-cheap", "ta-cheap"), ("s-dear", "ta-cheap"),  # cheapest active of the tier above; reserve skipped
    ("ta-dear", "sup"),  # tier 2 is empty: the nearest higher tier answers
    ("ta-asleep", "sup"), ("sup", None),
])
def test_next_tier(name: str, expected: str | None) -> None:
    got = CAT.next_tier(name)
    assert (got.name if got else None) == expected


@pytest.mark.parametrize(("kw", "p", "c", "usd"), [
    ({"cost_per_call": 0.002}, 1000, 1000, 0.002),
    ({"cost_per_1k_prompt": 0.001, "cost_per_1k_completion": 0.002}, 500, 250, 0.001),
    ({"cost_per_call": 0.001, "cost_per_1k_prompt": 0.01}, 100, 0, 0.002),
    ({}, 10_000, 10_000, 0.0),
])
def test_estimate_cost(kw, p, c, usd) -> None:
    assert estimate_cost(ModelSpec("m", "openai", Role.TA, 1, **kw), p, c) == pytest.approx(usd)
