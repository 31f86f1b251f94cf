"""`make demo`: start the embedded stack, replay the shipped real workload, print what the system did."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import httpx

from selfevolve.config import Settings
from selfevolve.errors import SelfEvolveError
from selfevolve.wire.codec import Codec
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics
from streams.kafka_io import producer, tail_consumer
from streams.stack_replay import replay
from streams.sqlclient import sql
from streams.stack import Stack, operator_settings

STAGE_TABLES = ("queries", "route_decisions", "inference_requests", "inference_responses", "scores",
                "answers", "feedback", "dead_letters", "model_events", "gaps", "spawns", "strategies")


def wait_ready(settings: Settings, timeout: float = 180.0) -> None:
    """Block until both stream workers have partitions assigned and tables recovered (their /ready pages)."""
    deadline = time.time() + timeout
    waiting = {"serve": settings.web_port, "history": settings.history_web_port}
    while time.time() < deadline:
        for role, port in list(waiting.items()):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
                if r.status_code == 200 and r.json().get("ready"):
                    del waiting[role]
            except httpx.TransportError:
                pass
        if not waiting:
            return
        time.sleep(1)
    raise SelfEvolveError(f"stream worker(s) {', '.join(waiting)} not ready after {timeout:.0f}s; "
                          f"see {settings.home / 'logs'}")


def demo_home(settings: Settings) -> Path:
    return settings.home / "demo"


def run_demo(settings: Settings, limit: int | None = None, warmup: int | None = None, live: bool = True) -> int:
    # Every demo starts from an empty history of its own: a second run then shows the same evolution in the
    # same time (with the first run's history its live student would already be serving, on the CPU).
    home = demo_home(settings)
    # Its own broker under that home: the caller's Kafka principal (if any) is not one of its users.
    settings = settings.model_copy(update={"home": home, "kafka_username": None, "kafka_password": None})
    Stack(settings).down()  # leftovers of an interrupted demo must not hold files about to be removed
    shutil.rmtree(home, ignore_errors=True)
    if live:
        # Only the demo's explicit live spawn trains; the buffer alone would train mid-replay.
        # The short form of a round: a few small steps on the questions' tails, so it fits the demo's time.
        settings = settings.model_copy(update={"distill_buffer": 10**9,
                                               "distill_steps": min(settings.distill_steps, 4),
                                               "distill_batch_size": min(settings.distill_batch_size, 4),
                                               "distill_max_prompt_tokens": 128, "distill_max_answer_tokens": 64})
    stack = Stack(settings)
    t0 = time.time()
    print(f"[demo] starting Kafka, the two stream workers and a model worker (logs: {stack.logs})", flush=True)
    if settings.kafka_security == "none":
        print("[demo] Kafka security is OFF (PLAINTEXT, no ACLs); SELFEVOLVE_KAFKA_SECURITY=sasl runs it with "
              "SASL/SCRAM and per-role ACLs", flush=True)
    stack.up(live=live)
    settings = operator_settings(settings)  # the demo's own producers and readers sign in as its broker's admin
    try:
        wait_ready(settings)
        print(f"[demo] stack ready in {time.time() - t0:.0f}s; replaying {settings.replay_dir.name} "
              "(RouterBench, Hu et al. 2024: real answers and costs of 11 LLMs)", flush=True)

        def progress(r, total):
            d = r.as_dict()
            print(f"[demo] {time.time() - t0:4.0f}s {d['answers']:4d}/{total} answered  acc={d['accuracy']:.3f}  "
                  f"cost={d['cost_usd']:.4f}$ vs supervisor {d['supervisor_cost_usd']:.4f}$  "
                  f"mix={d['strategies']}", flush=True)

        report = asyncio.run(_replay_watching(settings, limit, warmup, progress))
        time.sleep(settings.sink_flush_seconds + 1.0)  # let the sink flush the last batch
        summary(report.as_dict(), settings)
        if live:
            print(f"[demo] replay done at {time.time() - t0:.0f}s; live distillation next", flush=True)
            asyncio.run(live_distillation(settings, stack))
    finally:
        stack.down()
    print(f"[demo] done in {time.time() - t0:.0f}s; this run's history stays in {home} until the next demo:\n"
          f"       SELFEVOLVE_HOME={home} selfevolve sql \"SELECT strategy, count() FROM answers FINAL GROUP BY strategy\"",
          flush=True)
    return 0


async def _replay_watching(settings: Settings, limit, warmup, progress):
    """Replay while printing evolution events (promotions, gaps, spawns, thresholds) as they happen."""
    watcher = asyncio.create_task(watch_evolution(settings))
    try:
        return await replay(settings, settings.replay_dir, limit=limit, warmup=warmup, progress=progress)
    finally:
        await asyncio.sleep(2)  # let the last events arrive
        watcher.cancel()


async def watch_evolution(settings: Settings) -> None:
    codec = Codec.from_dir()
    topics = Topics.from_settings(settings)
    kinds = {topics.model_events: "model_event", topics.gaps: "gap", topics.spawns: "spawn",
             topics.strategy: "strategy"}
    consumers = [await tail_consumer(settings, t, from_beginning=False) for t in kinds]
    try:
        while True:
            for c in consumers:
                for tp, msgs in (await c.getmany(timeout_ms=100)).items():
                    for m in msgs:
                        print(f"[evolution] {_describe(kinds[tp.topic], codec.decode(kinds[tp.topic], m.value))}",
                              flush=True)
    finally:
        for c in consumers:
            await c.stop()


def _describe(kind: str, e: dict) -> str:
    if kind == "model_event":
        return f"{e['kind']:8} {e['model']} in domain {e['domain']}: {e['old_role']} -> {e['new_role']} ({e['reason']})"
    if kind == "gap":
        return (f"gap {e['kind']:5} domain {e['domain']}: confidence {e['mean_confidence']:.2f}, "
                f"failure rate {e['failure_rate']:.2f}, priority {e['priority']:.2f}")
    if kind == "spawn":
        return f"spawn    a {e['mode']} student for domain {e['domain']}, teacher {e['teacher']}"
    return f"strategy θh={e['theta_high']:.3f} θl={e['theta_low']:.3f} ({e['reason']})"


async def live_distillation(settings: Settings, stack: Stack, timeout: float = 900.0) -> None:
    """Live mode, short form: spawn a SmolLM2 student for the busiest domain, train it on its buffered
    teacher answers, hot-load it in the local worker, and ask it the same question before and after."""
    from selfevolve.models.catalogue import Catalogue

    cat = Catalogue.load(settings.catalogue)
    teachers = ", ".join(f"'{s.name}'" for s in cat.models if s.role in ("teacher", "supervisor"))
    _, rows = sql(settings, f"SELECT domain, count() AS n FROM scores FINAL WHERE model IN ({teachers}) "
                            f"AND confidence > {settings.distill_confidence} GROUP BY domain ORDER BY n DESC LIMIT 1")
    if not rows:
        print("[live] no confident teacher answer was buffered; nothing to distil")
        return
    domain, n = int(rows[0][0]), int(rows[0][1])
    _, plans = sql(settings, f"SELECT plan FROM route_decisions FINAL WHERE domain = {domain} LIMIT 1")
    question = json.loads(plans[0][0])["text"]
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    prod = producer(settings)
    await prod.start()
    responses = await tail_consumer(settings, topics.inference_responses, from_beginning=False)
    versions = await tail_consumer(settings, topics.model_events, from_beginning=False)
    try:
        print(f"[live] asking the base SmolLM2-135M a question of domain {domain} ...", flush=True)
        before = await _ask_local(prod, responses, codec, topics, question, "before", timeout)
        print(f"[live] base student answered: {before!r}", flush=True)
        spawn = {"domain": domain, "teacher": None, "mode": "live", "priority": 1.0,
                 "ts_ms": int(time.time() * 1000)}
        await prod.send_and_wait(topics.spawns, key=str(domain).encode(), value=codec.encode("spawn", spawn))
        print(f"[live] spawn: a live student for domain {domain}, from {n} confident teacher answers; "
              f"training {settings.distill_steps} steps on the CPU ...", flush=True)
        version = await _wait_version(versions, codec, timeout)
        print(f"[live] trained: {version['reason']}", flush=True)
        await _wait_hot_loaded(stack, version["checkpoint"], timeout)
        print(f"[live] hot-loaded {version['checkpoint']} into the running local worker (no restart)", flush=True)
        after = await _ask_local(prod, responses, codec, topics, question, "after", timeout)
        print(f"[live] distilled student answered: {after!r}", flush=True)
    finally:
        await prod.stop()
        await responses.stop()
        await versions.stop()


async def _ask_local(prod, consumer, codec, topics, text: str, tag: str, timeout: float) -> str:
    qid = f"live-{tag}-{int(time.time())}"
    req = {"request_id": qid, "query_id": qid, "tenant": "demo", "model": "smollm2-135m", "text": text,
           "strategy": "targeted", "stage": 0, "attempt": 0, "fallback_from": None, "metadata": {},
           "ts_ms": int(time.time() * 1000)}
    await prod.send_and_wait(topics.requests_for("local"), key=query_key("demo", qid).encode(),
                             value=codec.encode("inference_request", req))
    deadline = time.time() + timeout
    while time.time() < deadline:
        for msgs in (await consumer.getmany(timeout_ms=500)).values():
            for m in msgs:
                r = codec.decode("inference_response", m.value)
                if r["request_id"] == qid:
                    return r["answer"] if r["ok"] else f"(failed: {r['error']})"
    raise SelfEvolveError(f"the local worker did not answer within {timeout:.0f}s")


async def _wait_version(consumer, codec, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for msgs in (await consumer.getmany(timeout_ms=500)).values():
            for m in msgs:
                e = codec.decode("model_event", m.value)
                if e["kind"] == "version":
                    return e
    raise SelfEvolveError(f"no student version within {timeout:.0f}s; see the trainer log")


async def _wait_hot_loaded(stack: Stack, checkpoint: str, timeout: float) -> None:
    log = stack.logs / "local-worker.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and f"hot-loaded smollm2-135m version {checkpoint}" in log.read_text(errors="replace"):
            return
        await asyncio.sleep(1)
    raise SelfEvolveError(f"the local worker did not load {checkpoint} within {timeout:.0f}s")


def summary(d: dict, settings: Settings) -> None:
    print("\n=== selfevolve demo summary ===")
    print(f"queries sent        {d['queries']}")
    print(f"answers received    {d['answers']} (duplicates dropped: {d['duplicates']})")
    print(f"accuracy            {d['accuracy']:.3f}  (supervisor alone on the same queries: {d['supervisor_accuracy']:.3f})")
    ratio = d["cost_ratio"]
    print(f"cost                ${d['cost_usd']:.4f} vs ${d['supervisor_cost_usd']:.4f} supervisor-only"
          + (f"  = {ratio:.3f}x ({(1 - ratio) * 100:.0f}% saved)" if ratio else ""))
    for phase, p in d["by_phase"].items():
        n = max(p["answers"], 1)
        pr = p["cost_usd"] / p["supervisor_cost_usd"] if p["supervisor_cost_usd"] else float("nan")
        print(f"  {phase:8}          {p['answers']} answers, accuracy {p['correct'] / n:.3f}, cost ratio {pr:.3f}")
    print(f"strategy mix        {d['strategies']}")
    print(f"winners             {d['winners']}")
    print(f"fallbacks           {d['fallbacks']}")
    print(f"latency             p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms (produce -> answer, windowed replay)")
    print("events per stage (ClickHouse):")
    for table in STAGE_TABLES:
        try:
            _, rows = sql(settings, f"SELECT count() FROM (SELECT * FROM {table} FINAL)")
            print(f"  {table:22} {rows[0][0]}")
        except SelfEvolveError as e:
            print(f"  {table:22} ? ({e})", file=sys.stderr)
