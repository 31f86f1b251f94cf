"""Loader for RouterBench-format CSVs (Hu et al., 2024): prompts, real answers, real costs, correctness."""

from __future__ import annotations

import ast
import csv
import gzip
import io
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from selfevolve.errors import ConfigError

RESPONSE_SUFFIX = "|model_response"
COST_SUFFIX = "|total_cost"


def raise_field_limit() -> None:
    """Fields hold whole answers (code, few-shot prompts) that can pass csv's 128 KiB default."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

_FILE_RE = re.compile(r"^(?P<task>.+)_(?P<split>[^_]+)\.csv(?:\.gz)?$")


@dataclass(frozen=True)
class Sample:
    """One query with every model's recorded answer, cost and score (score is gold: evaluation only)."""

    sample_id: str
    task: str
    split: str
    prompt: str
    responses: dict[str, str]
    costs: dict[str, float]
    correct: dict[str, float]
    empty_scores: int = 0  # models with an empty score cell here (counted as wrong)
    row: str = ""  # the file's row index, to tell apart rows that share a sample_id


@dataclass(frozen=True)
class Dataset:
    """Samples of one or more RouterBench files; models is the union of their response columns."""

    samples: tuple[Sample, ...]
    models: tuple[str, ...]
    _by_id: dict[str, Sample] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._by_id:
            self._by_id.update((s.sample_id, s) for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def empty_scores(self) -> int:
        """Empty score cells (a model returned nothing scoreable); they are counted as wrong."""
        return sum(s.empty_scores for s in self.samples)

    def __iter__(self):
        return iter(self.samples)

    def get(self, sample_id: str) -> Sample | None:
        return self._by_id.get(sample_id)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(sorted({s.task for s in self.samples}))

    def split(self, name: str) -> Dataset:
        """The samples of one split (train / test)."""
        kept = tuple(s for s in self.samples if s.split == name)
        return Dataset(kept, self.models)

    def accuracy(self, model: str) -> float:
        """Share of samples the model got right (empty scores count as wrong). Gold: for benchmarks only."""
        return sum(s.correct.get(model, 0.0) for s in self.samples) / max(1, len(self.samples))

    def total_cost(self, model: str) -> float:
        return sum(s.costs.get(model, 0.0) for s in self.samples)

    def only(self, models: list[str] | tuple[str, ...]) -> Dataset:
        """The same samples seen through a sub-pool of models (a two-model deployment of an 11-model set)."""
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise ConfigError(f"models {unknown} are not in this data; it has {list(self.models)}")
        if not models:
            raise ConfigError("a pool needs at least one model")
        keep = tuple(dict.fromkeys(models))

        def cut(d: dict) -> dict:
            return {m: d[m] for m in keep if m in d}

        return Dataset(tuple(replace(s, responses=cut(s.responses), costs=cut(s.costs), correct=cut(s.correct))
                             for s in self.samples), keep)

    def require_responses(self) -> Dataset:
        """This dataset if every model has recorded answers to replay; else ConfigError naming the models
        whose model_response cells are all empty (scores alone cannot be replayed: the arbiter scores
        answers, and an empty answer is a failed call)."""
        silent = [m for m in self.models if not any(s.responses.get(m, "").strip() for s in self.samples)]
        if not self.samples or silent:
            what = "no samples" if not self.samples else f"no response texts for {silent}"
            raise ConfigError(f"this RouterBench data has {what}: a replay serves the recorded answers of the "
                              f"'<model>{RESPONSE_SUFFIX}' columns, and these are empty. Use data with the "
                              "answers, or leave those models out (bench quality --models)")
        return self

    def oracle(self) -> tuple[float, float]:
        """(accuracy, USD) of routing each query to its cheapest correct model, else its cheapest model."""
        right, usd = 0, 0.0
        for s in self.samples:
            ok = [s.costs[m] for m in s.costs if s.correct.get(m, 0.0) >= 1.0]
            right += bool(ok)
            usd += min(ok) if ok else min(s.costs.values(), default=0.0)
        return right / max(1, len(self.samples)), usd


def _literal_text(raw: str, where: str) -> str:
    """The text inside a Python-list literal cell such as "['answer']"; several items are joined."""
    if not raw:
        return ""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"{where}: not a Python literal: {raw[:80]!r}") from e
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list literal, got {type(value).__name__}")
    # A few few-shot arc prompts repeat the same string twice; keep each distinct part once, in order.
    return "\n\n".join(dict.fromkeys(str(v) for v in value))


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def load_file(path: Path, task: str | None = None, split: str | None = None) -> tuple[list[Sample], list[str]]:
    """(samples, models) of one RouterBench CSV; task/split default from the file name."""
    raise_field_limit()
    m = _FILE_RE.match(path.name)
    if (task is None or split is None) and not m:
        raise ConfigError(f"{path.name}: expected a name like <task>_<split>.csv")
    split = split or m.group("split")
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration as e:
            raise ConfigError(f"{path}: empty file") from e
        col = {name: i for i, name in enumerate(header)}
        for needed in ("sample_id", "prompt"):
            if needed not in col:
                raise ConfigError(f"{path}: no {needed!r} column")
        models = [h[: -len(RESPONSE_SUFFIX)] for h in header if h.endswith(RESPONSE_SUFFIX)]
        if not models:
            raise ConfigError(f"{path}: no '<model>{RESPONSE_SUFFIX}' columns")
        samples: list[Sample] = []
        for n, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ConfigError(f"{path}:{n}: {len(row)} fields, header has {len(header)}")
            where = f"{path.name}:{n}"
            sid = row[col["sample_id"]]
            responses, costs, correct = {}, {}, {}
            row_empty = 0
            for model in models:
                responses[model] = _literal_text(row[col[model + RESPONSE_SUFFIX]], where)
                raw_cost = row[col[model + COST_SUFFIX]] if model + COST_SUFFIX in col else ""
                if raw_cost:
                    costs[model] = float(raw_cost)
                raw_score = row[col[model]] if model in col else ""
                if raw_score == "":
                    row_empty += 1  # the model returned nothing scoreable: counted, and treated as wrong
                correct[model] = float(raw_score) if raw_score else 0.0
            sample_task = task or (row[col["eval_name"]] if "eval_name" in col else m.group("task"))
            prompt = _literal_text(row[col["prompt"]], where)
            index = row[col[""]] if "" in col else str(n)
            samples.append(Sample(sid, sample_task, split, prompt, responses, costs, correct, row_empty, index))
    return samples, models


def load_dir(path: Path, splits: tuple[str, ...] = ("train", "test")) -> Dataset:
    """Every <task>_<split>.csv[.gz] in path whose split is in splits, in sorted file order."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"RouterBench directory {path} does not exist")
    files = sorted(p for p in path.iterdir() if (m := _FILE_RE.match(p.name)) and m.group("split") in splits)
    if not files:
        raise ConfigError(f"{path}: no <task>_<split>.csv files for splits {splits}")
    samples: list[Sample] = []
    models: dict[str, None] = {}
    for f in files:
        got, ms = load_file(f)
        samples.extend(got)
        models.update(dict.fromkeys(ms))
    # RouterBench repeats a few arc sample_ids for different rows; suffix the row index so ids stay keys.
    counts = Counter(s.sample_id for s in samples)
    fixed = []
    for s in samples:
        if counts[s.sample_id] > 1:
            s = replace(s, sample_id=f"{s.sample_id}#{s.row}")
        fixed.append(s)
    return Dataset(tuple(fixed), tuple(models))
