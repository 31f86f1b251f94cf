"""RouterBench loader: parsing rules on synthetic files, the README figures on the real data, the demo slice."""

from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfevolve.data import make_demo, routerbench
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import ConfigError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "routerbench-0shot"
DEMO = Path(routerbench.__file__).resolve().parent / "demo"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/routerbench-0shot absent")

HEADER = ["", "sample_id", "prompt", "eval_name", "m-a", "m/b", "m-a|model_response", "m/b|model_response",
          "m-a|total_cost", "m/b|total_cost", "oracle_model_to_route_to"]


def _row(i, sid, prompt, a_score, b_score, a_resp="['A']", b_resp="['B']", task="toy"):
    return [str(i), sid, repr([prompt]), task, a_score, b_score, a_resp, b_resp, "0.001", "0.01", "m-a"]


def _write(path: Path, rows, header=HEADER) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    _write(tmp_path / "toy_train.csv", [_row(0, "t.1", "What's 'x'?\nA) y", "1.0", "0.0"),
                                        _row(1, "t.2", "second", "", "1.0", b_resp="['multi\\nline \"q\"']")])
    _write(tmp_path / "toy_test.csv.gz", [_row(2, "t.3", "third", "0.0", "1.0")])
    _write(tmp_path / "notes.csv", [])  # not <task>_<split>: ignored
    return tmp_path


def test_parses_literals_models_and_empty_scores(toy: Path) -> None:
    ds = load_dir(toy)
    assert ds.models == ("m-a", "m/b")
    assert [s.sample_id for s in ds] == ["t.3", "t.1", "t.2"]  # sorted file order: toy_test before toy_train
    s1 = ds.get("t.1")
    assert s1.prompt == "What's 'x'?\nA) y"
    assert s1.responses == {"m-a": "A", "m/b": "B"} and s1.costs == {"m-a": 0.001, "m/b": 0.01}
    assert s1.task == "toy" and s1.split == "train"
    s2 = ds.get("t.2")
    assert s2.responses["m/b"] == 'multi\nline "q"'
    assert s2.correct == {"m-a": 0.0, "m/b": 1.0} and s2.empty_scores == 1
    assert ds.empty_scores == 1 and ds.split("test").empty_scores == 0 and ds.split("train").empty_scores == 1


@pytest.mark.parametrize(("splits", "ids"), [(("train",), ["t.1", "t.2"]), (("test",), ["t.3"]),
                                             (("train", "test"), ["t.3", "t.1", "t.2"])])
def test_split_filter(toy: Path, splits, ids) -> None:
    assert [s.sample_id for s in load_dir(toy, splits)] == ids


def test_split_and_tasks(toy: Path) -> None:
    ds = load_dir(toy)
    assert len(ds.split("train")) == 2 and len(ds.split("test")) == 1 and ds.tasks == ("toy",)


def test_duplicate_sample_ids_get_row_suffix(tmp_path: Path) -> None:
    _write(tmp_path / "x_train.csv", [_row(7, "dup", "p1", "1.0", "1.0"), _row(9, "dup", "p2", "1.0", "1.0"),
                                      _row(10, "solo", "p3", "1.0", "1.0")])
    assert [s.sample_id for s in load_dir(tmp_path)] == ["dup#7", "dup#9", "solo"]


@pytest.mark.parametrize(("rows", "message"), [
    ([["0", "s", "not a literal (", "t", "1", "1", "['a']", "['b']", "1", "1", "m-a"]], "Python literal"),
    ([["0", "s", "['p']", "t", "1"]], "fields"),
])
def test_bad_rows_raise_config_error(tmp_path: Path, rows, message) -> None:
    _write(tmp_path / "bad_train.csv", rows)
    with pytest.raises(ConfigError, match=message):
        load_dir(tmp_path)


def test_missing_dir_or_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no <task>_<split>"):
        load_dir(tmp_path)


@given(st.text())
def test_list_literal_roundtrip(text: str) -> None:
    assert routerbench._literal_text(repr([text]), "cell") == text


def test_oracle_and_accuracy_on_toy(toy: Path) -> None:
    ds = load_dir(toy)
    assert ds.accuracy("m-a") == pytest.approx(1 / 3) and ds.total_cost("m/b") == pytest.approx(0.03)
    acc, usd = ds.oracle()  # t.1 -> m-a 0.001, t.2 -> m/b 0.01, t.3 -> m/b 0.01
    assert acc == 1.0 and usd == pytest.approx(0.021)


@needs_shared
def test_readme_reference_figures() -> None:
    start = time.perf_counter()
    ds = load_dir(SHARED)
    elapsed = time.perf_counter() - start
    test = ds.split("test")
    assert len(ds) == 3178 and len(test) == 953 and len(ds.models) == 11
    gpt4 = test.total_cost("gpt-4-1106-preview")
    assert round(test.accuracy("gpt-4-1106-preview"), 3) == 0.874
    assert round(gpt4, 2) == 4.80
    acc, usd = test.oracle()
    assert round(acc, 3) == 0.974 and round(usd / gpt4, 3) == 0.043
    assert len({s.sample_id for s in ds}) == len(ds)
    assert elapsed < 10, f"loading took {elapsed:.1f}s"


def test_demo_slice_shape() -> None:
    files = sorted(p.name for p in DEMO.glob("*.csv.gz"))
    assert len(files) == 6
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 10 * 2**20
    ds = load_dir(DEMO)
    assert len(ds) == 600 and len(ds.models) == 11
    assert ds.tasks == ("arc-challenge", "mbpp", "winogrande")
    for task in ds.tasks:
        for split in ("train", "test"):
            assert sum(1 for s in ds if s.task == task and s.split == split) == 100
    assert "RouterBench" in (DEMO / "ATTRIBUTION.md").read_text() and "Hu et al., 2024" in (
        DEMO / "ATTRIBUTION.md").read_text()


@needs_shared
def test_demo_slice_regenerates_identically(tmp_path: Path) -> None:
    written = make_demo.make_demo(SHARED, tmp_path)
    for path in written:
        assert path.read_bytes() == (DEMO / path.name).read_bytes(), path.name
        src = SHARED / path.name.removesuffix(".gz")
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f, src.open(encoding="utf-8", newline="") as g:
            assert next(csv.reader(f)) == next(csv.reader(g))  # every column kept


@pytest.mark.parametrize(("n", "sizes", "expected"), [
    (4, {"a": 6, "b": 2}, {"a": 3, "b": 1}),
    (3, {"a": 5, "b": 5}, {"a": 2, "b": 1}),  # tie on remainders broken by name
    (10, {"a": 3, "b": 2}, {"a": 3, "b": 2}),  # asking for more than there is keeps everything
])
def test_stratified_quotas(n, sizes, expected) -> None:
    import random

    rows = [[g] for g, k in sizes.items() for _ in range(k)]
    picked = make_demo.stratified(rows, 0, n, random.Random(0))
    assert picked == sorted(picked)
    got = {g: sum(1 for i in picked if rows[i][0] == g) for g in sizes}
    assert got == expected
