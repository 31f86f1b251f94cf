"""Replay a RouterBench-format dataset through the running stack, posting gold verdicts only after delivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.data.routerbench import Sample, load_dir
from selfevolve.flow.workload import plan  # the in-memory replay's order: train (warm-up) then test, by seed
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics
from streams.kafka_io import ensure_topics, producer, tail_consumer


@dataclass
class ReplayReport:
    """What one replay delivered, judged against gold after delivery."""

    queries: int = 0
    answers: int = 0
    duplicates: int = 0
    correct: float = 0.0
    cost_usd: float = 0.0
    supervisor_cost_usd: float = 0.0
    supervisor_correct: float = 0.0
    strategies: Counter = field(default_factory=Counter)
    winners: Counter = field(default_factory=Counter)
    fallbacks: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    by_phase: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        n = max(self.answers, 1)
        lat = sorted(self.latencies_ms) or [0.0]
        return {
            "queries": self.queries, "answers": self.answers, "duplicates": self.duplicates,
            "accuracy": self.correct / n, "cost_usd": self.cost_usd,
            "supervisor_accuracy": self.supervisor_correct / max(self.queries, 1),
            "supervisor_cost_usd": self.supervisor_cost_usd,
            "cost_ratio": self.cost_usd / self.supervisor_cost_usd if self.supervisor_cost_usd else None,
            "strategies": dict(self.strategies), "winners": dict(self.winners.most_common()),
            "fallbacks": self.fallbacks, "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "seconds": self.seconds,
            "by_phase": self.by_phase,
        }


async def replay(settings: Settings, data: Path, *, seed: int = 0, window: int = 50,
                 warmup: int | None = None, limit: int | None = None, supervisor: str = "gpt-4-1106-preview",
                 tenant: str = "replay", timeout_s: float = 120.0, feedback: bool = True,
                 progress: Callable[[ReplayReport, int], None] | None = None) -> ReplayReport:
    """Send queries a window at a time; after each window's answers arrive, post verdicts for the
    models that were paid for (the answer lists them). Nothing else ever sees the gold column."""
    ds = load_dir(data)
    codec = Codec.from_dir()
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    run = uuid.uuid4().hex[:8]
    steps = plan(ds, seed, warmup, limit)
    report = ReplayReport()
    answers = await tail_consumer(settings, topics.answers, from_beginning=False)
    prod = producer(settings)
    await prod.start()
    start = time.time()
    try:
        for lo in range(0, len(steps), window):
            chunk = steps[lo:lo + window]
            sent: dict[str, tuple[str, Sample, float]] = {}
            for phase, s in chunk:
                qid = f"{run}:{s.sample_id}"
                sent[qid] = (phase, s, time.time())
                record = {"query_id": qid, "text": s.prompt, "tenant": tenant,
                          "metadata": {"sample_id": s.sample_id, "task": s.task, "phase": phase},
                          "ts_ms": int(time.time() * 1000)}
                await prod.send(topics.queries, key=query_key(tenant, qid).encode(), value=codec.encode("query", record))
            await prod.flush()
            report.queries += len(chunk)
            got = await _collect(answers, codec, set(sent), timeout_s, report)
            for qid, ans in got.items():
                phase, s, t0 = sent[qid]
                _account(report, phase, s, ans, supervisor, (time.time() - t0) * 1000)
                if feedback:
                    for model in ans["models_called"]:
                        if model in s.correct:
                            fb = {"query_id": qid, "tenant": tenant, "model": model, "quality": float(s.correct[model]),
                                  "source": "replay-gold", "ts_ms": int(time.time() * 1000)}
                            await prod.send(topics.feedback, key=query_key(tenant, qid).encode(),
                                            value=codec.encode("feedback", fb))
            await prod.flush()
            if progress:
                progress(report, len(steps))
    finally:
        report.seconds = time.time() - start
        await prod.stop()
        await answers.stop()
    return report


async def _collect(consumer, codec: Codec, want: set[str], timeout_s: float, report: ReplayReport) -> dict:
    got: dict[str, dict] = {}
    deadline = time.time() + timeout_s
    while len(got) < len(want) and time.time() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for msgs in batches.values():
            for m in msgs:
                ans = codec.decode("answer", m.value)
                if ans["query_id"] not in want:
                    continue
                if ans["query_id"] in got:
                    report.duplicates += 1
                    continue
                got[ans["query_id"]] = ans
    return got


def _account(report: ReplayReport, phase: str, s: Sample, ans: dict, supervisor: str, latency_ms: float) -> None:
    report.answers += 1
    verdict = float(s.correct.get(ans["model"], 0.0))
    report.correct += verdict
    report.cost_usd += ans["cost_usd"]
    report.supervisor_cost_usd += s.costs.get(supervisor, 0.0)
    report.supervisor_correct += float(s.correct.get(supervisor, 0.0))
    report.strategies[ans["strategy"]] += 1
    report.winners[ans["model"]] += 1
    report.fallbacks += bool(ans["fallbacks"])
    report.latencies_ms.append(latency_ms)
    p = report.by_phase.setdefault(phase, {"answers": 0, "correct": 0.0, "cost_usd": 0.0, "supervisor_cost_usd": 0.0})
    p["answers"] += 1
    p["correct"] += verdict
    p["cost_usd"] += ans["cost_usd"]
    p["supervisor_cost_usd"] += s.costs.get(supervisor, 0.0)
    p["supervisor_correct"] = p.get("supervisor_correct", 0.0) + float(s.correct.get(supervisor, 0.0))


def run_replay(settings: Settings, data: Path, **kw) -> ReplayReport:
    return asyncio.run(replay(settings, data, **kw))
