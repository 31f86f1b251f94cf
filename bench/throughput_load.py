"""The load `selfevolve bench throughput` offers, and how it times the answers.

Pure parts (unit-tested in tests/unit/test_throughput_bench.py): the query texts for a given repeat rate, the
pacing schedule of a steady producer, percentiles. Async parts: a `Load` that produces queries to the running
stack's `queries` topic and times each one's answer on `answers`, driven either saturated (a bounded number in
flight, for a fixed time) or paced (one query every 1/rate seconds, however the stack keeps up).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from selfevolve.config import Settings
from selfevolve.wire.codec import Codec
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics
from streams.kafka_io import producer, tail_consumer

PER_MILLE = 1000  # repeat rates are whole per-mille, so the repeat count of any prefix is exact
CACHED = "cached"  # the strategy of an answer the answer cache gave (no model called)


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default); None if empty."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def is_repeat(i: int, repeat_rate: float) -> bool:
    """Whether query i (from 0) repeats an earlier text: spread evenly, so any first n hold floor(n * rate)
    repeats (rate in whole per-mille), and query 0 (with nothing earlier) never does while the rate is below 1."""
    k = round(repeat_rate * PER_MILLE)
    if not 0 <= k < PER_MILLE:
        raise ValueError(f"repeat rate {repeat_rate} is not in [0, 1)")
    return (i + 1) * k // PER_MILLE > i * k // PER_MILLE


def tagged(prompt: str, tag: str) -> str:
    """A recorded prompt made unique by a first line: the question stays last, where the embedders read."""
    return f"[{tag}]\n{prompt}"


def query_texts(pool: Sequence[tuple[str, str]], repeat_rate: float, run: str,
                seed: int = 0) -> Iterator[tuple[str, str, bool]]:
    """Endless (text, sample_id, repeated) from pool's (prompt, sample_id) pairs, in a shuffled cycle.

    A fresh query is the next prompt with a tag line no other query carries (so its text was never seen); a
    repeat is the exact text of an earlier query of this stream, drawn uniformly, with that query's
    sample_id (the replay backend answers by sample_id, so the tag never reaches a recording lookup).
    """
    if not pool:
        raise ValueError("empty prompt pool")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    seen: list[tuple[str, str]] = []
    i = 0
    while True:
        if is_repeat(i, repeat_rate):
            text, sid = seen[rng.randrange(len(seen))]
            yield text, sid, True
        else:
            prompt, sid = pool[order[len(seen) % len(order)]]
            seen.append((tagged(prompt, f"{run}-{len(seen)}"), sid))
            yield *seen[-1], False
        i += 1


def pace_schedule(rate: float, seconds: float) -> list[float]:
    """Send offsets (s from start) of a steady producer: one query every 1/rate s, for `seconds`."""
    if rate <= 0 or seconds <= 0:
        return []
    return [i / rate for i in range(int(math.floor(rate * seconds + 1e-9)))]


@dataclass
class LoadResult:
    """What one drive delivered: produce-to-answer latencies, the answers' span, and how the producer kept up."""

    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)
    behind_ms: list[float] = field(default_factory=list)  # paced only: how late each send left
    strategies: Counter = field(default_factory=Counter)  # answers by routing strategy ("cached": the answer cache)
    graded: list[tuple[str, str, str]] = field(default_factory=list)  # (strategy, model, sample_id) per answer

    def as_dict(self) -> dict:
        lat = self.latencies_ms
        out = {"queries": self.sent, "answers": self.answered, "duplicates": self.duplicates,
               "seconds": self.seconds, "qps": self.answered / self.seconds if self.seconds else 0.0,
               "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=None)}
        if self.decision_ms:
            out.update(router_p50_ms=percentile(self.decision_ms, 50), router_p99_ms=percentile(self.decision_ms, 99))
        if self.behind_ms:
            out.update(send_behind_p99_ms=percentile(self.behind_ms, 99), send_behind_max_ms=max(self.behind_ms))
        if self.strategies:
            out.update(strategies=dict(self.strategies),
                       answer_cache_hit_rate=self.strategies.get(CACHED, 0) / max(1, sum(self.strategies.values())))
        return out


def cache_accuracy(graded: Sequence[tuple[str, str, str]], gold: Mapping[str, Mapping[str, float]]) -> dict:
    """Accuracy of the answers the answer cache gave and of the others, by the recorded correctness of the
    answering model on the query's sample (RouterBench); None where there are none."""
    def acc(rows):
        scores = [gold[sid][model] for _, model, sid in rows if sid in gold and model in gold[sid]]
        return {"answers": len(rows), "accuracy": sum(scores) / len(scores) if scores else None}

    cached = [g for g in graded if g[0] == CACHED]
    fresh = [g for g in graded if g[0] != CACHED]
    # The fair comparison: fresh answers to the samples the cache answered too (repeats are drawn from the
    # run's first texts, so their mix of tasks differs from the fresh answers' as a whole).
    same = {sid for _, _, sid in cached}
    return {"cached": acc(cached), "fresh": acc(fresh), "fresh_same_samples": acc([g for g in fresh if g[2] in same])}


class Load:
    """A producer of queries and a reader of their answers (and, if asked, of the router's decision times)."""

    def __init__(self, settings: Settings, tenant: str = "bench", decisions: bool = False) -> None:
        self.settings, self.tenant, self.want_decisions = settings, tenant, decisions
        self.codec = Codec.from_dir()
        self.topics = Topics.from_settings(settings)
        self.sent: dict[str, float] = {}
        self.sample_of: dict[str, str] = {}
        self.done: set[str] = set()
        self.result = LoadResult()
        self.wake = asyncio.Event()
        self.first = self.last = 0.0

    async def __aenter__(self) -> Load:
        self.answers = await tail_consumer(self.settings, self.topics.answers, from_beginning=False)
        self.decisions = (await tail_consumer(self.settings, self.topics.route_decisions, from_beginning=False)
                          if self.want_decisions else None)
        self.prod = producer(self.settings)
        await self.prod.start()
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.prod.stop()
        await self.answers.stop()
        if self.decisions is not None:
            await self.decisions.stop()

    async def send(self, qid: str, text: str, sample_id: str) -> None:
        rec = {"query_id": qid, "text": text, "tenant": self.tenant, "metadata": {"sample_id": sample_id},
               "ts_ms": int(time.time() * 1000)}
        value = self.codec.encode("query", rec)
        now = time.perf_counter()
        self.first = self.first or now
        self.sent[qid] = now
        self.sample_of[qid] = sample_id
        self.result.sent += 1
        await self.prod.send(self.topics.queries, key=query_key(self.tenant, qid).encode(), value=value)

    async def _read(self) -> None:
        while True:
            for msgs in (await self.answers.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for m in msgs:
                    answer = self.codec.decode("answer", m.value)
                    qid = answer["query_id"]
                    if qid not in self.sent:
                        continue
                    if qid in self.done:
                        self.result.duplicates += 1
                        continue
                    self.done.add(qid)
                    self.result.latencies_ms.append((now - self.sent[qid]) * 1000)
                    self.result.strategies[answer["strategy"]] += 1
                    self.result.graded.append((answer["strategy"], answer["model"], self.sample_of[qid]))
                    self.last = now
                self.wake.set()
            if self.decisions is not None:
                for msgs in (await self.decisions.getmany(timeout_ms=0)).values():
                    for m in msgs:
                        d = self.codec.decode("route_decision", m.value)
                        if d["query_id"] in self.sent:
                            self.result.decision_ms.append(d["decision_ms"])

    @property
    def in_flight(self) -> int:
        return len(self.sent) - len(self.done)

    async def drain(self, timeout_s: float) -> LoadResult:
        """Wait until every query sent is answered (or the timeout), then close the books: the rate is the
        answers over the span from the first send to the last answer."""
        await self.prod.flush()
        deadline = time.perf_counter() + timeout_s
        while self.in_flight and time.perf_counter() < deadline:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        self.result.answered = len(self.done)
        self.result.seconds = max(self.last - self.first, 1e-9) if self.done else 0.0
        return self.result


def _ids(texts: Iterator[tuple[str, str, bool]], run: str) -> Iterator[tuple[str, str, str]]:
    for i, (text, sid, _) in enumerate(texts):
        yield f"{run}-{i}", text, sid


async def saturate(settings: Settings, texts: Iterator[tuple[str, str, bool]], run: str, seconds: float,
                   window: int, drain_s: float = 600.0, gold: Mapping | None = None) -> dict:
    """Keep `window` queries in flight for `seconds` (as many queries as that takes), then wait for the rest:
    the stack's maximum rate on this traffic, without a backlog that grows for the whole run."""
    async with Load(settings) as load:
        queries = _ids(texts, run)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            while load.in_flight >= window and time.perf_counter() < end:
                load.wake.clear()
                try:
                    await asyncio.wait_for(load.wake.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            if time.perf_counter() < end:
                await load.send(*next(queries))
                if load.result.sent % 64 == 0:
                    await asyncio.sleep(0)  # let the reader in
        result = await load.drain(drain_s)
        graded = {"answer_cache": cache_accuracy(result.graded, gold)} if gold is not None else {}
        return {**result.as_dict(), "window": window, **graded}


async def paced(settings: Settings, texts: Iterator[tuple[str, str, bool]], run: str, rate: float,
                seconds: float, drain_s: float = 120.0) -> dict:
    """One query every 1/rate s for `seconds` (a late send goes at once and is counted behind schedule), then
    wait for the rest: produce-to-answer latency at a steady offered load, not a burst's queueing."""
    queries = _ids(texts, run)
    async with Load(settings, decisions=True) as load:
        t0 = time.perf_counter()
        for at in pace_schedule(rate, seconds):
            wait = t0 + at - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            load.result.behind_ms.append(max(0.0, -wait) * 1000)
            await load.send(*next(queries))
        offered_s = time.perf_counter() - t0
        out = (await load.drain(drain_s)).as_dict()
    return {**out, "offered_qps": rate, "achieved_offered_qps": out["queries"] / offered_s if offered_s else 0.0}
