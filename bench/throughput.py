"""`selfevolve bench throughput`: push N queries through the full pipeline and compare with two baselines."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics
from streams.demo import wait_ready
from streams.kafka_io import ensure_topics, producer, tail_consumer
from streams.stack_replay import replay
from streams.stack import Stack, broker_for, operator_settings


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def roundtrip(settings: Settings, payloads: list[bytes]) -> dict:
    """Baseline: the same bytes produced to and consumed from one topic of the same broker."""
    topic = f"{settings.topic_prefix}bench-roundtrip"
    await ensure_topics(settings, [topic])
    consumer = await tail_consumer(settings, topic, from_beginning=False)
    prod = producer(settings)
    await prod.start()
    sent: dict[bytes, float] = {}
    lat: list[float] = []
    t0 = time.perf_counter()

    async def consume():
        while len(lat) < len(payloads):
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                now = time.perf_counter()
                lat.extend((now - sent[m.key]) * 1000 for m in msgs)

    reader = asyncio.create_task(consume())
    for i, p in enumerate(payloads):
        key = str(i).encode()
        sent[key] = time.perf_counter()
        await prod.send(topic, key=key, value=p)
    await prod.flush()
    await asyncio.wait_for(reader, 300)
    seconds = time.perf_counter() - t0
    await prod.stop()
    await consumer.stop()
    return {"messages": len(payloads), "msgs_per_s": len(payloads) / seconds,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def embed_rate(settings: Settings, texts: list[str], batch: int = 64) -> dict:
    """Baselines: the router's embedding model alone on distinct texts (every one a model call), and on the
    stream's own texts in the router's batches through its exact-text cache (repeats are cache hits)."""
    from selfevolve.routing.embed import Embedder

    distinct = list(dict.fromkeys(texts))[:2000]
    cold = Embedder(settings, cache_size=0)
    cold.encode(distinct[:8])  # load outside the timing
    t0 = time.perf_counter()
    cold.encode(distinct)
    cold_s = time.perf_counter() - t0
    warm = cold.with_cache_size(settings.embed_cache_size)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        warm.encode(texts[i : i + batch])
    warm_s = time.perf_counter() - t0
    return {"texts": len(distinct), "texts_per_s": len(distinct) / cold_s,
            "stream_texts": len(texts), "stream_texts_per_s": len(texts) / warm_s,
            "stream_cache_hit_rate": warm.hits / max(1, warm.hits + warm.misses)}


async def pipeline(settings: Settings, items: list[tuple[str, str, str]]) -> dict:
    codec = Codec.from_dir()
    topics = Topics.from_settings(settings)
    answers = await tail_consumer(settings, topics.answers, from_beginning=False)
    decisions = await tail_consumer(settings, topics.route_decisions, from_beginning=False)
    prod = producer(settings)
    await prod.start()
    sent: dict[str, float] = {}
    lat: list[float] = []
    decision_ms: list[float] = []
    t0 = time.perf_counter()

    async def consume():
        seen: set[str] = set()
        while len(seen) < len(items):
            for msgs in (await answers.getmany(timeout_ms=200)).values():
                now = time.perf_counter()
                for m in msgs:
                    qid = codec.decode("answer", m.value)["query_id"]
                    if qid in sent and qid not in seen:
                        seen.add(qid)
                        lat.append((now - sent[qid]) * 1000)
            for msgs in (await decisions.getmany(timeout_ms=0)).values():
                decision_ms.extend(codec.decode("route_decision", m.value)["decision_ms"] for m in msgs)

    reader = asyncio.create_task(consume())
    for qid, text, sample_id in items:
        rec = {"query_id": qid, "text": text, "tenant": "bench", "metadata": {"sample_id": sample_id},
               "ts_ms": int(time.time() * 1000)}
        sent[qid] = time.perf_counter()
        await prod.send(topics.queries, key=query_key("bench", qid).encode(), value=codec.encode("query", rec))
    await prod.flush()
    try:
        await asyncio.wait_for(reader, 3600)
    finally:
        seconds = time.perf_counter() - t0
        await prod.stop()
        await answers.stop()
        await decisions.stop()
    return {"queries": len(items), "answers": len(lat), "seconds": seconds, "qps": len(lat) / seconds,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "router_p50_ms": _pct(decision_ms, 50),
            "router_p99_ms": _pct(decision_ms, 99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="selfevolve bench throughput", description=__doc__)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=400, help="windowed replay with feedback first")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--port", type=int, default=19392)
    ap.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    base = Settings.load()
    data = args.data or (base.data_dir / "routerbench-0shot")
    if not data.exists():
        data = base.replay_dir
    home = Path(tempfile.mkdtemp(prefix="selfevolve-bench-"))
    settings = Settings(home=home, kafka_bootstrap=f"127.0.0.1:{args.port}", web_port=args.port + 10,
                        history_web_port=args.port + 12, sql_port=args.port + 11, replay_dir=data, topic_prefix="bench.")
    ds = load_dir(data)
    rng = random.Random(args.seed)
    pool = list(ds.split("test").samples) or list(ds.samples)
    picks = [pool[rng.randrange(len(pool))] for _ in range(args.n)]
    items = [(f"tp{i}:{s.sample_id}", s.prompt, s.sample_id) for i, s in enumerate(picks)]
    codec = Codec.from_dir()
    payloads = [codec.encode("query", {"query_id": q, "text": t, "tenant": "bench", "metadata": {"sample_id": s},
                                       "ts_ms": 0}) for q, t, s in items]
    stack = Stack(settings)
    print(f"[throughput] {args.n} queries from {data}; broker and workers under {home}", flush=True)
    stack.up()
    settings = operator_settings(settings)  # with Kafka security on: the bench broker's admin
    try:
        wait_ready(settings)
        if args.warmup:
            r = asyncio.run(replay(settings, data, warmup=args.warmup, limit=0, window=200, seed=args.seed))
            print(f"[throughput] warm-up: {r.answers} answered with feedback", flush=True)
        result = asyncio.run(pipeline(settings, items))
        print(f"[throughput] pipeline: {result['qps']:.1f} q/s, p50 {result['p50_ms']:.0f} ms, "
              f"p99 {result['p99_ms']:.0f} ms, router p50 {result['router_p50_ms']:.2f} ms", flush=True)
        rt = asyncio.run(roundtrip(settings, payloads))
        print(f"[throughput] bare broker round trip: {rt['msgs_per_s']:.0f} msg/s", flush=True)
    finally:
        stack.down()
    emb = embed_rate(settings, [s.prompt for s in picks])
    print(f"[throughput] embedding alone: {emb['texts_per_s']:.1f} distinct texts/s; this stream through the "
          f"cache: {emb['stream_texts_per_s']:.1f} texts/s ({emb['stream_cache_hit_rate']:.1%} hits)", flush=True)
    out = {**{k: result[k] for k in ("qps", "p50_ms", "p99_ms", "router_p50_ms")}, "pipeline": result,
           "baselines": {"broker_roundtrip": rt, "embedding": emb},
           "ratios": {"qps_over_broker": result["qps"] / rt["msgs_per_s"],
                      "qps_over_embedding": result["qps"] / emb["texts_per_s"],
                      "qps_over_cached_embedding": result["qps"] / emb["stream_texts_per_s"]},
           "distinct_texts": len({s.prompt for s in picks}),
           "paper_claim_qps": 285, "data": str(data), "n": args.n, "warmup": args.warmup,
           "machine": "2 shared CPU cores, two stream workers (serve, history), one model worker, replay backend"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("qps", "p50_ms", "p99_ms", "router_p50_ms", "ratios")}, indent=2))
    return 0
