"""`selfevolve bench security`: run issue #12's attacks against a fresh broker and pipeline; write the outcomes."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from infra.ports import broker_ports
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.wire.topics import Topics
from streams.kafka_io import ensure_topics, producer, tail_consumer

OUTCOMES = ("refused", "succeeded", "error")
RESULT_KEYS = ("attack", "target", "outcome", "detail", "valid_queries_sent", "valid_queries_lost")


# ---- valid traffic and readers, shared with tests/security/test_fuzz.py --------------------------------------

def demo_queries(settings: Settings, n: int, tenants: tuple[str, ...], prefix: str, seed: int = 0) -> list[dict]:
    """n valid Query records from the shipped replay slice (the replay backend answers them), spread over
    tenants round-robin, with ids `<prefix><i>` no other traffic uses."""
    from selfevolve.data.routerbench import load_dir

    samples = list(load_dir(settings.replay_dir).samples)
    random.Random(seed).shuffle(samples)
    return [{"query_id": f"{prefix}{i}", "text": s.prompt, "tenant": tenants[i % len(tenants)],
             "metadata": {"sample_id": s.sample_id}, "ts_ms": int(time.time() * 1000)}
            for i, s in enumerate(samples[:n])]


async def send_raw(settings: Settings, items: list[tuple[str, bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """Produce (topic, key, value) items in order; returns each one's (partition, offset)."""
    prod = producer(settings)
    await prod.start()
    try:
        futures = [await prod.send(topic, key=key, value=value) for topic, key, value in items]
        return [(md.partition, md.offset) for md in [await f for f in futures]]
    finally:
        await prod.stop()


async def send_queries(settings: Settings, records: list[dict], topic: str | None = None) -> list[tuple[int, int]]:
    codec = Codec.from_dir()
    topic = topic or Topics.from_settings(settings).queries
    return await send_raw(settings, [(topic, r["query_id"].encode(), codec.encode("query", r)) for r in records])


async def read_topic(settings: Settings, topic: str, timeout: float, done=None, idle: float = 3.0) -> list:
    """Every committed record of `topic` from the start: until done(records) holds, `timeout` passes, or (without
    done) nothing new arrived for `idle` seconds."""
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    out: list = []
    deadline, quiet_since = time.time() + timeout, time.time()
    try:
        while time.time() < deadline:
            got = await consumer.getmany(timeout_ms=300)
            for msgs in got.values():
                out += msgs
            quiet_since = time.time() if got else quiet_since
            if (done(out) if done else time.time() - quiet_since > idle):
                break
    finally:
        await consumer.stop()
    return out


def answer_topics(settings: Settings, tenants: tuple[str, ...]) -> list[str]:
    """Where the scorer may deliver answers: the shared topic and, with tenancy, each tenant's own."""
    topics = Topics.from_settings(settings)
    return [topics.answers, *(topics.answers_for(t) for t in tenants)]


async def answer_counts(settings: Settings, tenants: tuple[str, ...], want: set[tuple[str, str]],
                        timeout: float) -> dict[str, Counter]:
    """Per answer topic, how many answers each (tenant, query id) of `want` got (read_committed); waits until
    every one of them is answered somewhere or `timeout` passes, then reads once more for late repeats."""
    codec = Codec.from_dir()
    await ensure_topics(settings, answer_topics(settings, tenants))
    counts: dict[str, Counter] = {}
    deadline = time.time() + timeout
    while True:
        for topic in answer_topics(settings, tenants):
            msgs = await read_topic(settings, topic, timeout=10, idle=1.0)
            counts[topic] = Counter(k for k in (_answer_key(codec, m.value) for m in msgs) if k in want)
        answered = set().union(*counts.values())
        if answered >= want or time.time() > deadline:
            return counts
        await asyncio.sleep(2)


def _answer_key(codec: Codec, value: bytes | None) -> tuple[str, str] | None:
    try:
        a = codec.decode("answer", value)
    except Exception:  # noqa: BLE001 - hostile bytes on the answers topic are skipped here
        return None
    return a["tenant"], a["query_id"]


def lost_and_repeated(counts: dict[str, Counter], want: set[tuple[str, str]]) -> tuple[set, set]:
    """(valid queries with no answer on any topic, those answered more than once on one topic)."""
    answered = set().union(*counts.values()) if counts else set()
    repeated = {k for c in counts.values() for k, n in c.items() if n > 1}
    return want - answered, repeated


async def dead_letters(settings: Settings, timeout: float, done=None) -> list[dict]:
    """Decoded dead letters of the run, from the start of the dead-letter topic."""
    codec = Codec.from_dir()
    topic = Topics.from_settings(settings).dead_letter

    def decoded(msgs):
        return [codec.decode("dead_letter", m.value) for m in msgs]

    msgs = await read_topic(settings, topic, timeout, done=(lambda ms: done(decoded(ms))) if done else None)
    return decoded(msgs)


# ---- results -------------------------------------------------------------------------------------------------

@dataclass
class Result:
    attack: str
    target: str
    outcome: str
    detail: str
    valid_queries_sent: int = 0
    valid_queries_lost: int = 0


def result_row(r: Result) -> dict:
    """One attack's JSON row; raises ValueError for an outcome outside OUTCOMES."""
    if r.outcome not in OUTCOMES:
        raise ValueError(f"outcome {r.outcome!r} is not one of {OUTCOMES}")
    return {"attack": r.attack, "target": r.target, "outcome": r.outcome, "detail": r.detail[:2000],
            "valid_queries_sent": int(r.valid_queries_sent), "valid_queries_lost": int(r.valid_queries_lost)}


def build_report(results: list[Result], meta: dict) -> dict:
    """The JSON of bench/results/security.json: every attack's row, totals by outcome and of lost queries."""
    rows = [result_row(r) for r in results]
    totals = {o: sum(1 for r in rows if r["outcome"] == o) for o in OUTCOMES}
    totals.update(attacks=len(rows), valid_queries_sent=sum(r["valid_queries_sent"] for r in rows),
                  valid_queries_lost=sum(r["valid_queries_lost"] for r in rows))
    return {"attacks": rows, "totals": totals, **meta}


# ---- the run ------------------------------------------------------------------------------------------------------

async def _view(settings: Settings, tenants: tuple[str, ...]):
    from bench.security_attacks import View

    codec = Codec.from_dir()
    await ensure_topics(settings, answer_topics(settings, tenants))
    per_topic: dict = {}  # topic -> (tenant, query id) -> answers
    for topic in answer_topics(settings, tenants):
        for m in await read_topic(settings, topic, timeout=30, idle=2.0):
            try:
                a = codec.decode("answer", m.value)
            except Exception:  # noqa: BLE001 - the junk an attack wrote
                continue
            per_topic.setdefault(topic, {}).setdefault((a["tenant"], a["query_id"]), []).append(a)
    return View(per_topic, await dead_letters(settings, timeout=30))


def _principals(admin: Settings, tenants: tuple[str, ...]) -> tuple[Settings, Settings]:
    """(attacker, anonymous): tenant mallory's credential and a client with none. add_tenant also makes each
    tenant's topics; without Kafka security the attacker is simply any client."""
    from infra.kafka.security import add_tenant, tenant_user

    attacker = admin
    for t in (*tenants, "mallory"):
        password = add_tenant(admin, t)
        if t == "mallory" and password is not None:
            attacker = admin.model_copy(update={"kafka_username": tenant_user(t), "kafka_password": password})
    anonymous = admin.model_copy(update={"kafka_security": "none", "kafka_username": None, "kafka_password": None})
    return attacker, anonymous


async def _pipeline(ctx, per_attack: int) -> list[tuple[object, list[dict]]]:
    """Launch every pipeline attack between valid queries; returns (judge, valid queries around it)."""
    from bench.security_attacks import PIPELINE_ATTACKS

    launched = []
    for attack in PIPELINE_ATTACKS:
        around = ctx.valid(per_attack)
        await send_queries(ctx.admin, around[: per_attack // 2])
        try:
            judge = await attack(ctx)
        except Exception as e:  # noqa: BLE001 - the bench reports a broken attack, it does not stop
            judge = _errored(attack.__name__, e)
        await send_queries(ctx.admin, around[per_attack // 2:])
        launched.append((judge, around))
    return launched


def _errored(name: str, e: BaseException):
    def judge(view) -> Result:
        return Result(name, "-", "error", f"{type(e).__name__}: {e}"[:300])
    return judge


def run(settings: Settings, per_attack: int, scratch: Path) -> list[Result]:
    from streams.demo import wait_ready
    from bench.security_attacks import Ctx, state_overflow
    from bench.security_host import sandbox_attacks, secret_attacks, sql_attacks
    from streams.stack import Stack, broker_for, operator_settings

    stack = Stack(settings)
    try:
        broker_for(settings).start()
        admin = operator_settings(settings)  # the tooling's principal: the super user when secured
        # Tenants before the workers start: adding one later rebalances every pattern subscriber.
        attacker, anonymous = _principals(admin, ("alpha", "beta"))
        stack.up()
        wait_ready(settings, timeout=300)
        settings = operator_settings(stack.settings)
        attacker = attacker.model_copy(update={"kafka_ca_file": settings.kafka_ca_file})
        ctx = Ctx(settings, attacker, anonymous, scratch, canary=settings.openai_api_key.get_secret_value())
        results = secret_attacks(ctx, {n: stack.pid(n) for n in ("streams", "history", "model-worker-0")})
        results += sandbox_attacks(ctx, int(settings.kafka_bootstrap.rsplit(":", 1)[1]))
        launched = asyncio.run(_pipeline(ctx, per_attack))
        sql_around = ctx.valid(per_attack)
        asyncio.run(send_queries(settings, sql_around))
        sql_results = sql_attacks(ctx)
        want = {(q["tenant"], q["query_id"]) for _, qs in launched for q in qs} | \
               {(q["tenant"], q["query_id"]) for q in sql_around}
        counts = asyncio.run(answer_counts(settings, ctx.tenants, want, timeout=180))
        view = asyncio.run(_view(settings, (*ctx.tenants, "mallory")))
        for judge, around in launched:
            got = judge(view)
            got = asyncio.run(got) if asyncio.iscoroutine(got) else got
            # An attack with several rows: the valid queries around it count once, on its first row.
            for i, r in enumerate(got if isinstance(got, list) else [got]):
                results.append(_count_lost(r, around, counts) if i == 0 else r)
        results += [_count_lost(r, sql_around, counts, stored_queries(settings, sql_around)) if i == 0 else r
                    for i, r in enumerate(sql_results)]
        results.append(asyncio.run(state_overflow(ctx, per_attack)))  # last: it may stop the answer path
        return results
    finally:
        stack.down()


def _count_lost(r: Result, around: list[dict], counts: dict[str, Counter], stored: set | None = None) -> Result:
    """Fill in the valid queries sent around an attack and how many were not answered exactly once (or, with
    `stored`, are missing from the history's queries table: the sink must keep inserting)."""
    want = {(q["tenant"], q["query_id"]) for q in around}
    lost, repeated = lost_and_repeated(counts, want)
    unstored = want - stored if stored is not None else set()
    r.valid_queries_sent, r.valid_queries_lost = len(want), len(lost | (repeated & want) | unstored)
    if stored is not None:
        r.detail += f"; the sink stored {len(want & stored)} of the {len(want)} valid queries around it"
    return r


def stored_queries(settings: Settings, queries: list[dict], wait_s: float = 30.0) -> set[tuple[str, str]]:
    """Which of the queries the history's queries table holds (through the SQL endpoint), waiting for the sink."""
    from streams.sqlclient import sql

    want = {(q["tenant"], q["query_id"]) for q in queries}
    ids = ", ".join(f"'{qid}'" for _, qid in sorted(want))  # ids made by demo_queries: no quotes in them
    deadline, found = time.time() + wait_s, set()
    while time.time() < deadline and not want <= found:
        try:
            _, rows = sql(settings, f"SELECT tenant, query_id FROM queries FINAL WHERE query_id IN ({ids})")
            found = {(str(t), str(q)) for t, q in rows}
        except Exception:  # noqa: BLE001 - the endpoint restarting: try again
            pass
        time.sleep(1)
    return found & want


def print_table(report: dict) -> None:
    rows = [(r["attack"], r["outcome"], str(r["valid_queries_lost"]), r["detail"][:90]) for r in report["attacks"]]
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="selfevolve bench security")
        for col in ("attack", "outcome", "lost", "detail"):
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        Console(width=200).print(t)
    except ImportError:
        for row in rows:
            print(" | ".join(row))
    print(json.dumps(report["totals"]))


def main(argv: list[str] | None = None) -> int:
    import secrets

    ap = argparse.ArgumentParser(prog="selfevolve bench security", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results/security.json"))
    ap.add_argument("--valid-per-attack", type=int, default=4, help="valid queries sent around each attack")
    ap.add_argument("--security", default="sasl", choices=["none", "sasl", "sasl_ssl"],
                    help="Kafka security of the bench's broker (none: see what an open broker lets through)")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="selfevolve-security-"))
    scratch = home / "scratch"
    scratch.mkdir()
    port, web, history_web, sql_port = broker_ports(3)
    security = args.security
    settings = Settings(home=home, kafka_bootstrap=f"127.0.0.1:{port}", web_port=web, history_web_port=history_web,
                        sql_port=sql_port, topic_prefix="sec.", sink_flush_seconds=0.5,
                        openai_api_key=f"sk-canary-{secrets.token_hex(8)}", kafka_security=security)
    t0 = time.time()
    print(f"[security] broker and workers under {home} (Kafka security: {security})", flush=True)
    results = run(settings, args.valid_per_attack, scratch)
    report = build_report(results, {"kafka_security": security, "seconds": round(time.time() - t0, 1),
                                    "valid_queries_per_attack": args.valid_per_attack})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    return 0
