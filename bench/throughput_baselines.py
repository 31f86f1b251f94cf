"""Baselines of `selfevolve bench throughput`, measured in the same run: the bare broker, and embedding alone."""

from __future__ import annotations

import asyncio
import time

from bench.throughput_load import percentile
from selfevolve.config import Settings
from streams.kafka_io import ensure_topics, producer, tail_consumer


async def roundtrip(settings: Settings, payloads: list[bytes]) -> dict:
    """The same bytes produced to and consumed from one topic of the same broker, all at once."""
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
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def embed_rate(settings: Settings, texts: list[str], batch: int, budget_s: float = 10.0) -> dict:
    """One embedder alone on distinct texts (no cache: every text a model call), in the router's batches,
    one thread, until the texts or the time budget run out. Texts must be distinct, or the rate is a cache's."""
    from selfevolve.routing.embed import Embedder

    if len(set(texts)) != len(texts):
        raise ValueError("the embedding baseline needs distinct texts")
    emb = Embedder(settings, cache_size=0)
    t0 = time.perf_counter()
    emb.encode(["warm up the model"])  # load outside the timing
    load_s = time.perf_counter() - t0
    done = 0
    t0 = time.perf_counter()
    while done < len(texts) and time.perf_counter() - t0 < budget_s:
        emb.encode(texts[done:done + batch])
        done += len(texts[done:done + batch])
    seconds = time.perf_counter() - t0
    return {"embedder": emb.name, "texts": done, "batch": batch, "threads": 1, "seconds": seconds,
            "texts_per_s": done / seconds if seconds else 0.0, "load_s": load_s}
