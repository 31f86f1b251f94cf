"""RouteLLM GSM8K -> RouterBench format: format, fixed-seed split, costs from token counts, labels kept."""

from __future__ import annotations

import ast
import csv
import json
import os
from pathlib import Path

import pytest

from selfevolve.data import routellm
from selfevolve.data.routellm import PRICES, Price, convert, routellm_answer
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import ConfigError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "routellm-gsm8k"
needs_shared = pytest.mark.skipif(not (SHARED / "gsm8k_responses.csv").is_file(),
                                  reason="../shared/data/routellm-gsm8k absent")

GPT4, MIX = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"
SRC_GPT4, SRC_MIX = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def words(texts):
    """A stand-in tokenizer: whitespace-separated words."""
    return [len(t.split()) for t in texts]


# (question, gold number, gpt-4 label, gpt-4 response, mixtral label, mixtral response)
ROWS = [
    ("Ann has 2 apples and buys 3. How many?", "5", "True", "2 + 3 = 5\n#### 5", "True", " 2+3=<<2+3=5>>5\n#### 5\n\n"),
    ("Bo has 10, spends 4. Left?", "6", "True", "10 - 4 = 6", "False", " He has 7 left.\n#### 7"),
    ("Cy earns $20 twice. Total?", "40", "True", "She gets \"$40\", that's it, 40", "False", " 20, 20: 30"),
    # RouteLLM's rule reads "$20.00" as 0: labelled wrong in the source although the value is right.
    ("Di pays $25 minus $5. Pays?", "20", "False", "25 - 5 = $20.00", "True", " 20\n#### 20"),
    ("Ed walks 3 km a day for 4 days. Total?", "12", "False", "3 * 4 = 11", "False", " 7"),
    ("Fay reads 1,200 pages in 2 days. Per day?", "600", "True", "1,200 / 2 = 600 pages", "True", " 600"),
    ("Gus has 9 cats, 3 leave. Left?", "6", "True", "9 - 3 = 6", "False", " 5"),
    ("Hal buys 4 packs of 5. Total?", "20", "True", "4 * 5 = 20", "True", " 20"),
    ("Ivy has 8 pens, loses half. Left?", "4", "True", "8 / 2 = 4", "True", " 4"),
    ("Jo runs 5 miles twice. Total?", "10", "False", "5 + 5 = 11", "True", " 10"),
]
TRAIN = [{"question": f"Train question {i}?", "answer": f"Step {i}.\n#### {i}"} for i in range(9)]


def write_source(root: Path, rows=ROWS, header=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "gsm8k_responses.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or ["prompt", SRC_MIX, SRC_GPT4, f"{SRC_MIX}_response", f"{SRC_GPT4}_response"])
        for q, _, g_lab, g_resp, m_lab, m_resp in rows:
            w.writerow([q, m_lab, g_lab, m_resp, g_resp])
    with (root / "test.jsonl").open("w", encoding="utf-8") as f:
        # Gold solutions in another order than the responses, with a distractor: rows are matched by question.
        for q, gold, *_ in reversed(rows):
            f.write(json.dumps({"question": q, "answer": f"Some steps 1 2 3.\n#### {gold}"}) + "\n")
        f.write(json.dumps({"question": "Unused?", "answer": "#### 1"}) + "\n")
    with (root / "train.jsonl").open("w", encoding="utf-8") as f:
        for t in TRAIN:
            f.write(json.dumps(t) + "\n")
    (root / "LICENSE-RouteLLM").write_text("Apache License 2.0\n")
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "src")


def read_rows(out: Path) -> dict[str, dict[str, str]]:
    got = {}
    for split in ("train", "test"):
        with (out / f"gsm8k_{split}.csv").open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                got[r["sample_id"]] = {**r, "split": split}
    return got


def test_format_is_what_the_routerbench_loader_reads(source, tmp_path):
    out = tmp_path / "out"
    meta = convert(source, out, words)
    assert sorted(p.name for p in out.iterdir()) == ["LICENSE-RouteLLM", "gsm8k_test.csv", "gsm8k_train.csv",
                                                     "meta.json"]
    ds = load_dir(out)
    assert ds.models == (GPT4, MIX) and ds.tasks == ("gsm8k",) and len(ds) == len(ROWS)
    assert ds.empty_scores == 0
    by_q = {s.prompt: s for s in ds}
    assert set(by_q) == {r[0] for r in ROWS}  # the bare question is the prompt
    for q, gold, g_lab, g_resp, m_lab, m_resp in ROWS:
        s = by_q[q]
        # Response texts survive the list-literal round trip exactly (quotes, commas, leading space, newlines).
        assert s.responses == {GPT4: g_resp, MIX: m_resp}
        assert set(s.costs) == {GPT4, MIX} and all(c > 0 for c in s.costs.values())
    # sample_id and the index column name the problem's line in GSM8K test.jsonl (written in reverse there).
    raw = read_rows(out)
    for sid, r in raw.items():
        i = int(r[""])
        assert sid == f"gsm8k.test.{i}" and r["eval_name"] == "gsm8k"
        assert ast.literal_eval(r["prompt"]) == [ROWS[len(ROWS) - 1 - i][0]]
        assert r["gold_answer"] == ROWS[len(ROWS) - 1 - i][1]
    assert meta["models"] == [GPT4, MIX]
    assert meta["source_models"] == {SRC_GPT4: GPT4, SRC_MIX: MIX}


def test_oracle_column_is_the_cheapest_correct_model(source, tmp_path):
    convert(source, tmp_path / "out", words)
    for r in read_rows(tmp_path / "out").values():
        right = [m for m in (GPT4, MIX) if r[m] == "1.0"]
        want = min(right, key=lambda m: float(r[f"{m}|total_cost"])) if right else "no_model_correct"
        assert r["oracle_model_to_route_to"] == want


def test_split_is_deterministic_disjoint_and_stratified(source, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    convert(source, a, words, seed=0)
    convert(source, b, words, seed=0)
    for name in ("gsm8k_train.csv", "gsm8k_test.csv", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    rows = read_rows(a)
    test = {sid for sid, r in rows.items() if r["split"] == "test"}
    assert len(rows) == len(ROWS) and 0 < len(test) < len(ROWS)
    # Each (gpt-4, mixtral) label pair is split in half (rounded), so both halves keep the accuracies.
    pairs: dict[tuple[str, str], list[str]] = {}
    for sid, r in rows.items():
        pairs.setdefault((r[GPT4], r[MIX]), []).append(r["split"])
    for splits in pairs.values():
        assert abs(splits.count("test") - len(splits) / 2) <= 0.5
    # Another seed draws other halves of the same sizes.
    seeds = {}
    for seed in range(6):
        convert(source, c, words, seed=seed)
        seeds[seed] = frozenset(sid for sid, r in read_rows(c).items() if r["split"] == "test")
    assert len(set(seeds.values())) > 1 and len({len(s) for s in seeds.values()}) == 1


@pytest.mark.parametrize("fraction, strata, n_test", [
    (0.5, [0] * 10, 5), (0.3, [0] * 10, 3), (0.5, [0, 0, 0, 1, 1, 1], 4), (0.5, [(1.0, 0.0)] * 4 + [(0.0, 0.0)] * 2, 3),
])
def test_split_indices_sizes(fraction, strata, n_test):
    train, test = routellm.split_indices(strata, seed=7, test_fraction=fraction)
    assert len(test) == n_test and sorted(train + test) == list(range(len(strata)))
    assert train == sorted(train) and test == sorted(test)
    assert routellm.split_indices(strata, seed=7, test_fraction=fraction) == (train, test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_fraction_must_leave_both_halves(fraction):
    with pytest.raises(ConfigError):
        routellm.split_indices([0, 1], test_fraction=fraction)


@pytest.mark.parametrize("price, tokens_in, tokens_out, usd", [
    (PRICES[GPT4], 1_000_000, 0, 10.0),
    (PRICES[GPT4], 0, 1_000_000, 30.0),
    (PRICES[GPT4], 344, 1, 0.00347),  # RouterBench winogrande.dev.1's gpt-4 row
    (PRICES[MIX], 344, 2, 0.0002076),  # and its mixtral row
    (PRICES[MIX], 1_000_000, 1_000_000, 1.2),
    (Price(1.5, 2.0), 0, 0, 0.0),
])
def test_price_table(price, tokens_in, tokens_out, usd):
    assert price.cost(tokens_in, tokens_out) == pytest.approx(usd, rel=1e-12)


def test_costs_come_from_token_counts_of_the_8_shot_call(source, tmp_path):
    out = tmp_path / "out"
    convert(source, out, words)
    prefix = "".join(f"Question: {t['question']}\nAnswer: {t['answer']}\n\n" for t in TRAIN[:8])
    assert routellm.few_shot_prefix(TRAIN) == prefix
    by_q = {r[0]: r for r in ROWS}
    for row in read_rows(out).values():
        q = by_q[ast.literal_eval(row["prompt"])[0]]
        n_in = len((prefix + f"Question: {q[0]}\nAnswer:").split())
        for model, resp in ((GPT4, q[3]), (MIX, q[5])):
            n_out = len(resp.split())
            assert int(row[f"{model}|input_tokens"]) == n_in
            assert int(row[f"{model}|output_tokens"]) == n_out
            assert float(row[f"{model}|total_cost"]) == PRICES[model].cost(n_in, n_out)
    # Same input for both models, so GPT-4 costs at least (10 + 30·out) / (0.6 + 0.6·out)-fold more.
    ds = load_dir(out)
    assert ds.total_cost(GPT4) > 10 * ds.total_cost(MIX)


def test_the_counter_sees_every_text_once_per_model(source, tmp_path):
    seen: list[list[str]] = []

    def spy(texts):
        seen.append(list(texts))
        return words(texts)

    convert(source, tmp_path / "out", spy)
    assert len(seen) == 3 and all(len(batch) == len(ROWS) for batch in seen)
    assert all(t.startswith("Question: Train question 0?") and t.endswith("\nAnswer:") for t in seen[0])
    assert {tuple(seen[1]), tuple(seen[2])} == {tuple(r[3] for r in ROWS), tuple(r[5] for r in ROWS)}


def test_gold_labels_are_kept_and_checked_against_routellms_rule(source, tmp_path):
    meta = convert(source, tmp_path / "out", words)
    by_q = {ast.literal_eval(r["prompt"])[0]: r for r in read_rows(tmp_path / "out").values()}
    for q, _, g_lab, _, m_lab, _ in ROWS:
        r = by_q[q]
        assert r[GPT4] == ("1.0" if g_lab == "True" else "0.0")
        assert r[MIX] == ("1.0" if m_lab == "True" else "0.0")
    # Every fixture label follows the rule, "$20.00" -> 0 included: no disagreements.
    assert meta["label_rule_disagreements"] == {GPT4: 0, MIX: 0}
    n = len(ROWS)
    assert sum(s["rows"] for s in meta["splits"].values()) == n
    acc = {m: sum(meta["splits"][s]["accuracy"][m] * meta["splits"][s]["rows"] for s in ("train", "test")) / n
           for m in (GPT4, MIX)}
    assert acc[GPT4] == pytest.approx(sum(r[2] == "True" for r in ROWS) / n)
    assert acc[MIX] == pytest.approx(sum(r[4] == "True" for r in ROWS) / n)


def test_a_label_the_rule_disputes_is_kept_and_counted(tmp_path):
    rows = list(ROWS)
    rows[4] = (*rows[4][:2], "True", *rows[4][3:])  # labelled right, but "3 * 4 = 11" is not 12
    src = write_source(tmp_path / "src", rows)
    meta = convert(src, tmp_path / "out", words)
    assert meta["label_rule_disagreements"] == {GPT4: 1, MIX: 0}
    ed = next(s for s in load_dir(tmp_path / "out") if s.prompt.startswith("Ed walks"))
    assert ed.correct[GPT4] == 1.0


def test_numeric_labels_rescore_by_value(source, tmp_path):
    convert(source, tmp_path / "out", words, labels="numeric")
    by_q = {s.prompt: s for s in load_dir(tmp_path / "out")}
    assert by_q["Di pays $25 minus $5. Pays?"].correct[GPT4] == 1.0  # "$20.00" is 20
    assert by_q["Cy earns $20 twice. Total?"].correct[GPT4] == 1.0
    assert by_q["Ed walks 3 km a day for 4 days. Total?"].correct[GPT4] == 0.0


@pytest.mark.parametrize("text, value", [
    ("#### 18", 18), ("$1,200 total", 1200), ("$20.00", 0), ("0.5", 5), ("no number", None),
    ("-3 degrees", 3), ("a 2 b 30\n\n", 30),
])
def test_routellm_answer_rule(text, value):
    assert routellm_answer(text) == value


@pytest.mark.parametrize("text, value", [("$20.00", 20.0), ("0.5", 0.5), ("1,200", 1200.0), ("-3", -3.0),
                                         ("none", None)])
def test_numeric_answer(text, value):
    assert routellm.numeric_answer(text) == value


@pytest.mark.parametrize("break_it, message", [
    (lambda p: (p / "gsm8k_responses.csv").unlink(), "missing data file"),
    (lambda p: (p / "train.jsonl").write_text(json.dumps(TRAIN[0]) + "\n"), "few-shot"),
    (lambda p: (p / "test.jsonl").write_text(""), "not found in test.jsonl"),
    (lambda p: write_source(p, header=["prompt", "a", "b", "a_response", "b_response"]), "expected columns"),
    (lambda p: write_source(p, [(*ROWS[0][:2], "yes", *ROWS[0][3:])]), "neither True nor False"),
    (lambda p: write_source(p, [ROWS[0], ROWS[0]]), "repeated"),
])
def test_bad_sources_are_refused(source, tmp_path, break_it, message):
    break_it(source)
    with pytest.raises(ConfigError, match=message):
        convert(source, tmp_path / "out", words)
    assert not (tmp_path / "out").exists()


def test_unknown_label_mode_is_refused(source, tmp_path):
    with pytest.raises(ConfigError, match="labels"):
        convert(source, tmp_path / "out", words, labels="gold")


class _Settings:
    def __init__(self, root: Path):
        self.data_dir = root / "data"
        self.cache_dir = root / "cache"


def test_ensure_writes_once_and_again_when_the_source_changes(tmp_path, monkeypatch):
    settings = _Settings(tmp_path)
    write_source(settings.data_dir / "routellm-gsm8k")
    calls = []
    real = routellm.convert

    def counted(src, out, count_tokens=None, **kw):
        calls.append(out)
        return real(src, out, words, **kw)

    monkeypatch.setattr(routellm, "convert", counted)
    out = routellm.ensure(settings)
    assert out == tmp_path / "cache" / "data" / "routellm-gsm8k" and len(calls) == 1
    assert routellm.ensure(settings) == out and len(calls) == 1  # current: not rewritten
    assert routellm.ensure(settings, seed=1) == out and len(calls) == 2  # other options: rewritten
    assert routellm.ensure(settings, seed=1) == out and len(calls) == 2
    write_source(settings.data_dir / "routellm-gsm8k", ROWS[:6])  # the source changed
    routellm.ensure(settings, seed=1)
    assert len(calls) == 3 and len(load_dir(out)) == 6
    (out / "gsm8k_test.csv").unlink()  # a damaged output is rebuilt
    routellm.ensure(settings, seed=1)
    assert len(calls) == 4 and (out / "gsm8k_test.csv").is_file()


def test_ensure_without_the_shared_data_says_so(tmp_path):
    with pytest.raises(ConfigError, match="missing data file"):
        routellm.ensure(_Settings(tmp_path))


@needs_shared
def test_real_file_rows_accuracies_and_labels(tmp_path):
    """The shared file: 1,319 problems, GPT-4 85.7% and Mixtral 63.8% (shared/README), labels = RouteLLM's rule."""
    meta = convert(SHARED, tmp_path / "out", words)
    ds = load_dir(tmp_path / "out")
    assert len(ds) == 1319 and ds.models == (GPT4, MIX) and ds.empty_scores == 0
    assert len({s.sample_id for s in ds}) == 1319
    assert ds.accuracy(GPT4) == pytest.approx(1130 / 1319) and round(ds.accuracy(GPT4), 3) == 0.857
    assert ds.accuracy(MIX) == pytest.approx(842 / 1319) and round(ds.accuracy(MIX), 3) == 0.638
    assert meta["label_rule_disagreements"] == {GPT4: 0, MIX: 0}
    train, test = ds.split("train"), ds.split("test")
    assert (len(train), len(test)) == (658, 661)
    for half in (train, test):
        assert half.accuracy(GPT4) == pytest.approx(ds.accuracy(GPT4), abs=0.002)
        assert half.accuracy(MIX) == pytest.approx(ds.accuracy(MIX), abs=0.002)
    prefix = routellm.few_shot_prefix(routellm._read_jsonl(SHARED / "train.jsonl"))
    assert prefix.startswith("Question: Natalia sold clips") and prefix.count("Question: ") == 8


@needs_shared
@pytest.mark.slow
def test_real_tokenizer_counts_and_costs(tmp_path):
    """The shipped SmolLM2 BPE: fixed counts on a fixed text, and the real conversion's cost scale."""
    count = routellm.smollm2_counter()
    assert count(["Janet’s ducks lay 16 eggs per day.", "Please answer with the letter.\n\nIan"]) == [13, 10]
    rows = list(csv.DictReader((SHARED / "gsm8k_responses.csv").open(encoding="utf-8", newline="")))[:40]
    with (tmp_path / "gsm8k_responses.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for name in ("test.jsonl", "train.jsonl"):
        os.symlink(SHARED / name, tmp_path / name)
    convert(tmp_path, tmp_path / "out", count)
    ds = load_dir(tmp_path / "out")
    for s in ds:
        # The 8-shot input is ~1,300 SmolLM2 tokens; a GPT-4 call costs about a cent or two, Mixtral ~5% of it.
        assert 0.012 < s.costs[GPT4] < 0.05 and 0.02 < s.costs[MIX] / s.costs[GPT4] < 0.1
