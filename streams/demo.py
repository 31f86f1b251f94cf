"""`make demo`: start the embedded stack, replay the shipped real workload, print what the system did."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import httpx

from selfevolve.config import Settings
from streams.store import TABLES
from selfevolve.data.routerbench import load_dir
from selfevolve.distill import evaluate as ev
from selfevolve.errors import SelfEvolveError
from selfevolve.wire.codec import Codec
from selfevolve.wire.topics import Topics
from streams.kafka_io import producer, tail_consumer
from streams.produce import call_model
from streams.stack_replay import replay
from streams.sqlclient import sql
from streams.stack import Stack, operator_settings

STAGE_TABLES = tuple(TABLES.values())  # one ClickHouse table per event kind (streams/store.py)


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


HELD_OUT = 30  # held-out questions the live phase judges before and after its round


async def live_distillation(settings: Settings, stack: Stack, timeout: float = 900.0) -> None:
    """Live mode, short form: spawn a SmolLM2 student for the busiest domain, train it on its buffered
    teacher answers and hot-load it in the local worker; then answer held-out questions of that domain with
    the untrained and the trained student and report both accuracies (gold only reports, after the fact)."""
    busiest = _busiest_domain(settings)
    if busiest is None:
        print("[live] no confident teacher answer was buffered; nothing to distil")
        return
    from selfevolve.distill.live import read_record  # loads torch: only the live phase needs it

    domain, n = busiest
    version = await _spawn_and_wait(settings, stack, domain, n, timeout)
    checkpoint = Path(version["checkpoint"])
    record = read_record(checkpoint)
    if "query_ids" not in record:
        print(f"[live] {checkpoint} has no round record naming its training questions; without it no question "
              "is known to be held out, so the student is not evaluated", flush=True)
        return
    questions = ev.held_out(domain_questions(settings, domain), record["query_ids"],
                            record.get("prompt_digests", ()), HELD_OUT)
    if questions:
        await _served_check(settings, questions[0], timeout)
        print(f"[live] answering {len(questions)} held-out questions of domain {domain} with the untrained and "
              f"the trained student (greedy, at most {ev.EVAL_MAX_NEW_TOKENS} new tokens, prompts cut to their "
              f"last {settings.distill_max_prompt_tokens} tokens as in training) ...", flush=True)
    for line in await asyncio.to_thread(judge_round, settings, str(domain), questions, checkpoint, record):
        print(f"[live] {line}", flush=True)


def _busiest_domain(settings: Settings) -> tuple[int, int] | None:
    """(domain, confident teacher answers) of the domain with the most of them, or None."""
    from selfevolve.models.catalogue import Catalogue

    cat = Catalogue.load(settings.catalogue)
    teachers = ", ".join(f"'{s.name}'" for s in cat.models if s.role in ("teacher", "supervisor"))
    _, rows = sql(settings, f"SELECT domain, uniqExact(query_id) AS n FROM scores FINAL WHERE model IN ({teachers}) "
                            f"AND confidence > {settings.distill_confidence} GROUP BY domain ORDER BY n DESC LIMIT 1")
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def domain_questions(settings: Settings, domain: int) -> list[ev.Question]:
    """The domain's replayed questions whose gold answer the rules can read (from the replayed RouterBench
    rows: reporting only, after every decision was made)."""
    _, rows = sql(settings, "SELECT d.query_id, JSONExtractString(d.plan, 'text'), q.metadata['sample_id'], "
                            "q.metadata['phase'], q.metadata['task'] FROM route_decisions AS d FINAL "
                            "JOIN queries AS q FINAL ON d.query_id = q.query_id "
                            f"WHERE d.domain = {int(domain)}")
    return gold_questions(rows, load_dir(settings.replay_dir))


def gold_questions(rows, dataset) -> list[ev.Question]:
    """Questions from (query_id, prompt, sample_id, phase, task) rows whose sample has a readable gold."""
    out = []
    for qid, prompt, sample_id, phase, task in rows:
        sample = dataset.get(str(sample_id))
        if sample is None or not prompt:
            continue
        q = ev.question(str(qid), str(prompt), sample.responses, sample.correct, str(phase), str(task))
        if q is not None:
            out.append(q)
    return out


def judge_round(settings: Settings, domain: str, questions: list[ev.Question], checkpoint: Path,
                record: dict, answer=None) -> list[str]:
    """Answer the questions with the base student and the trained checkpoint; the report's lines.
    answer(which, prompts) -> answers, which in ("before", "after"), replaces the two models in tests."""
    answer = answer or _model_answers(settings, checkpoint)
    prompts = [q.prompt for q in questions]
    before = ev.score(answer("before", prompts) if questions else [], questions)
    after = ev.score(answer("after", prompts) if questions else [], questions)
    return ev.report_lines(domain, questions, before, after, record.get("loss", ()),
                           int(record.get("batch_size", settings.distill_batch_size)),
                           int(record.get("examples", 0)))


def _model_answers(settings: Settings, checkpoint: Path):
    """answer(which, prompts): the untrained base SmolLM2 ("before") or the trained checkpoint ("after")."""
    def answer(which: str, prompts: list[str]) -> list[str]:
        from selfevolve.distill.lm import load_causal_lm
        from selfevolve.distill.train import load_checkpoint

        if which == "before":
            lm, tok = load_causal_lm(None, settings)
        else:
            student, _ = load_checkpoint(checkpoint, settings)
            lm, tok = ev.serving_lm(student), student.tokenizer
        t0 = time.time()
        out = ev.answer_all(lm, tok, prompts, settings.distill_max_prompt_tokens)
        print(f"[live] {which}: {len(prompts)} answers in {time.time() - t0:.0f}s", flush=True)
        return out
    return answer


async def _spawn_and_wait(settings: Settings, stack: Stack, domain: int, n: int, timeout: float) -> dict:
    """Ask the trainer for a live round on the domain; return its version event once the worker serves it."""
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    prod = producer(settings)
    await prod.start()
    versions = await tail_consumer(settings, topics.model_events, from_beginning=False)
    try:
        spawn = {"domain": domain, "teacher": None, "mode": "live", "priority": 1.0,
                 "ts_ms": int(time.time() * 1000)}
        await prod.send_and_wait(topics.spawns, key=str(domain).encode(), value=codec.encode("spawn", spawn))
        print(f"[live] spawn: a live student for domain {domain}, from {n} confident teacher answers; "
              f"training {settings.distill_steps} steps on the CPU ...", flush=True)
        version = await _wait_version(versions, codec, timeout)
        print(f"[live] trained: {version['reason']}", flush=True)
        await _wait_hot_loaded(stack, version["checkpoint"], timeout)
        print(f"[live] hot-loaded {version['checkpoint']} into the running local worker (no restart)", flush=True)
        return version
    finally:
        await prod.stop()
        await versions.stop()


async def _served_check(settings: Settings, q: ev.Question, timeout: float) -> None:
    """One held-out question through Kafka to the running worker: the hot-loaded student serves."""
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    prod = producer(settings)
    await prod.start()
    responses = await tail_consumer(settings, topics.inference_responses, from_beginning=False)
    try:
        got = await _ask_local(prod, responses, codec, topics, q.prompt, "served", timeout)
    finally:
        await prod.stop()
        await responses.stop()
    print(f"[live] served check: the running worker's student answered a held-out question {got!r} "
          f"(gold {q.gold}; it reads the whole prompt, the evaluation below its tail as training does)", flush=True)


async def _ask_local(prod, consumer, codec, topics, text: str, tag: str, timeout: float) -> str:
    qid = f"live-{tag}-{int(time.time())}"
    r = await call_model(prod, consumer, codec, topics, "local", "demo", "smollm2-135m", qid, text, timeout)
    if r is None:
        raise SelfEvolveError(f"the local worker did not answer within {timeout:.0f}s")
    return r["answer"] if r["ok"] else f"(failed: {r['error']})"


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
    test = d["by_phase"].get("test")
    if test and test["supervisor_cost_usd"]:
        # The savings that count: on the test half, after the warm-up has taught the router (and been paid).
        pr, n = test["cost_usd"] / test["supervisor_cost_usd"], max(test["answers"], 1)
        sup = test.get("supervisor_correct")
        of = f", {test['correct'] / sup:.1%} of the supervisor's" if sup else ""
        print(f"after the warm-up   test half: accuracy {test['correct'] / n:.3f}{of}, cost {pr:.3f} of "
              f"supervisor-only ({(1 - pr) * 100:.0f}% saved)")
    target = settings.quality_target
    print("quality target      " + (f"{target:g} of the supervisor's quality (audit rate "
                                    f"{settings.audit_start_rate:g} for {settings.quality_audit_calibration} audits, "
                                    f"then {settings.quality_audit_rate:g}; λ starts at {settings.cost_lambda:g} and "
                                    "moves to meet it)" if target is not None else
                                    f"none (λ={settings.cost_lambda:g}; SELFEVOLVE_QUALITY_TARGET=0.95 sets one)"))
    if settings.quality_targets:
        own = ", ".join(f"{t}: {'none' if v is None else f'{v:g}'}" for t, v in sorted(settings.quality_targets.items()))
        print(f"  per tenant        {own} (SELFEVOLVE_QUALITY_TARGETS; each measured and met apart)")
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
