"""A replay's workload: query records in a seeded stream order, and the gold that is read only after delivery.

`Workload.queries` is what the driver sends (ts_ms = i * 1000: event time, the same on every run);
`Workload.feedback(answer)` is the one reader of gold while a replay runs: the verdict on each model the
delivered answer lists in models_called, as the replay's feedback poster sends it. `outcomes(result, w)`
judges each delivered answer against gold after the fact, for the benchmarks and replay summaries.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from selfevolve.data.routerbench import Dataset, Sample
from selfevolve.flow.driver import Result
from selfevolve.wire.records import decision_from_record
from selfevolve.wire.tenancy import record_key

TENANT = "replay"
GOLD_SOURCE = "replay-gold"


@dataclass
class Workload:
    """Queries to send, and per query key (tenant/id): its phase, gold verdicts per model, the supervisor's
    cost and correctness (what `cost vs supervisor` compares with; None where unknown)."""

    name: str
    queries: list[dict]
    gold: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    supervisor: str | None = None
    supervisor_cost: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._meta = {record_key(q): q.get("metadata") or {} for q in self.queries}

    def phase(self, key: str) -> str:
        return self._meta.get(key, {}).get("phase", "test")

    def task(self, key: str) -> str:
        return self._meta.get(key, {}).get("task", "")

    def feedback(self, answer: Mapping) -> list[dict]:
        """The gold verdict on each model the answer paid for, at the answer's event time."""
        known = self.gold.get(record_key(answer), {})
        return [{"query_id": answer["query_id"], "tenant": answer["tenant"], "model": m, "quality": float(known[m]),
                 "source": GOLD_SOURCE, "ts_ms": int(answer["ts_ms"])}
                for m in answer["models_called"] if m in known]

    def judge(self, answer: Mapping) -> float | None:
        """Gold on the delivered model (0 for no answer at all); None when gold says nothing of it."""
        if not answer.get("model"):
            return 0.0
        return self.gold.get(record_key(answer), {}).get(answer["model"])


def plan(ds: Dataset, seed: int, warmup: int | None = None, limit: int | None = None) -> list[tuple[str, Sample]]:
    """Train rows first (warm-up traffic, paid for like any other), then test rows, each shuffled by seed."""
    rng = random.Random(seed)
    train, test = list(ds.split("train").samples), list(ds.split("test").samples)
    rng.shuffle(train)
    rng.shuffle(test)
    train = train if warmup is None else train[:warmup]
    test = test if limit is None else test[:limit]
    return [("warmup", s) for s in train] + [("test", s) for s in test]


def from_samples(name: str, phased: Sequence[tuple[str, Sample]], supervisor: str | None,
                 tenant: str | Callable[[Sample], str] = TENANT) -> Workload:
    """One query per sample (its id the sample id, its metadata naming the row, task and phase), sent by
    `tenant` (or by the tenant tenant(sample) names)."""
    queries, gold, sup = [], {}, {}
    for i, (phase, s) in enumerate(phased):
        q = {"query_id": s.sample_id, "text": s.prompt, "tenant": tenant(s) if callable(tenant) else tenant,
             "metadata": {"sample_id": s.sample_id, "task": s.task, "phase": phase}, "ts_ms": i * 1000}
        queries.append(q)
        gold[record_key(q)] = dict(s.correct)
        if supervisor is not None and supervisor in s.costs:
            sup[record_key(q)] = s.costs[supervisor]
    return Workload(name, queries, gold, supervisor, sup)


def from_log(name: str, queries: Iterable[Mapping], feedback: Iterable[Mapping], supervisor: str | None = None,
             supervisor_price: float | None = None) -> Workload:
    """The queries of an exported run, in their recorded order (re-stamped i * 1000), and its feedback as
    gold (the latest verdict per query and model). The supervisor's cost is its catalogue price per call."""
    qs = [{"query_id": q["query_id"], "text": q["text"], "tenant": q.get("tenant") or "default",
           "metadata": dict(q.get("metadata") or {}), "ts_ms": i * 1000} for i, q in enumerate(queries)]
    gold: dict[str, dict[str, float]] = {}
    for fb in sorted(feedback, key=lambda r: int(r.get("ts_ms", 0))):
        gold.setdefault(record_key(fb), {})[fb["model"]] = float(fb["quality"])
    sup = {record_key(q): supervisor_price for q in qs} if supervisor_price is not None else {}
    return Workload(name, qs, gold, supervisor, sup)


@dataclass(frozen=True)
class Outcome:
    """One delivered answer: its decision, the arbiter's verdict, and (after the fact) gold's word on it."""

    key: str
    phase: str
    task: str
    strategy: str
    models: tuple[str, ...]
    domain: int
    winner: str
    models_called: tuple[str, ...]
    cost: float
    confidence: float
    stages: int
    estimates: dict[str, float]
    correct: float | None  # gold on the delivered model; None when gold says nothing
    verdicts: dict[str, float]  # gold on every model called (what the feedback poster sent)


def outcomes(result: Result, workload: Workload) -> list[Outcome]:
    """Each delivered answer of a run, in delivery order, judged against gold only now."""
    decisions: dict[str, dict] = {}
    for d in result.of("route_decision"):
        decisions.setdefault(record_key(d), d)
    answers = {record_key(a): a for a in result.of("answer")}
    out = []
    for o in result.deliveries:
        v = o.payload  # the scorer's Verdict: confidence and stages are not on the topic
        key = record_key(o.record)
        a, d = answers[key], decisions[key]
        known = workload.gold.get(key, {})
        out.append(Outcome(key, workload.phase(key), workload.task(key), d["strategy"], tuple(d["models"]), int(d.get("domain", -1)),
                           a["model"], tuple(a["models_called"]), float(a["cost_usd"]), float(v.confidence),
                           int(v.stages), dict(decision_from_record(d).estimates), workload.judge(a),
                           {m: known[m] for m in a["models_called"] if m in known}))
    return out
