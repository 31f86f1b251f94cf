"""The attacks of `selfevolve bench security` on the pipeline, through Kafka (issue #12's findings): each
launches, then judges what happened. The sandbox, SQL and secrets attacks are bench/security_host.py."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.wire.topics import Topics
from selfevolve.wire.tenancy import query_key
from bench.security import (Result, answer_counts, dead_letters, demo_queries, lost_and_repeated,
                                    send_queries)


@dataclass
class Ctx:
    """What the attacks share: admin (tooling) settings, an attacker tenant's settings, the run's scratch dir."""

    admin: Settings
    attacker: Settings  # tenant "mallory"'s credential when Kafka security is on; else anyone's client
    anonymous: Settings  # a client with no credential at all
    scratch: Path
    canary: str
    tenants: tuple[str, ...] = ("alpha", "beta")
    seq: int = 0

    def valid(self, n: int) -> list[dict]:
        """n fresh valid queries (ids no other attack uses)."""
        self.seq += 1
        return demo_queries(self.admin, n, self.tenants, prefix=f"v{self.seq}-", seed=self.seq)


async def attacker_send(settings: Settings, topic: str, key: bytes | None, value: bytes | None,
                        **producer_kw) -> str | None:
    """Produce one record as `settings`' principal; returns None when the broker took it, else why not."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka_io import client_options

    prod = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000,
                            **client_options(settings), **producer_kw)
    try:
        await asyncio.wait_for(prod.start(), 15)
        await asyncio.wait_for(prod.send_and_wait(topic, key=key, value=value), 20)
        return None
    except Exception as e:  # noqa: BLE001 - every way the broker can say no is an outcome here
        return f"{type(e).__name__}: {e}"[:300] or "refused"
    finally:
        try:
            await asyncio.wait_for(prod.stop(), 10)
        except Exception:  # noqa: BLE001
            pass


def _qkey(tenant: str, qid: str) -> bytes:
    """The Kafka key a real writer gives a query's events: its (tenant, id)."""
    return query_key(tenant, qid).encode()


def _tenant_topic(settings: Settings, stage: str, tenant: str) -> str:
    return getattr(Topics.from_settings(settings), f"{stage}_for")(tenant)


def _forged_decision(codec: Codec, qid: str, tenant: str, text: str, plan: str | None = None) -> bytes:
    import dataclasses

    from selfevolve.routing import Decision
    from selfevolve.wire.records import decision_record

    values = dict(query_id=qid, tenant=tenant, text=text, strategy="targeted", similarity=0.99,
                  models=("gpt-4-1106-preview",), escalation=(), escalate_below=0.0, expected_cost=0.0,
                  max_cost=0.0, budget=None, estimates={}, costs={}, fallbacks={}, reason="forged",
                  theta_high=0.8, theta_low=0.5, cost_lambda=0.1)
    d = Decision(**{f.name: values.get(f.name) for f in dataclasses.fields(Decision)})
    record = decision_record(d, {}, 0.1, int(time.time() * 1000), 0)
    if plan is not None:
        record["plan"] = plan
    return codec.encode("route_decision", record)


def _forged_response(codec: Codec, qid: str, tenant: str, answer: str) -> bytes:
    model = "gpt-4-1106-preview"
    # The id the scorer expects is deterministic: an attacker who knows the query computes it.
    record = {"request_id": f"{_qkey(tenant, qid).decode()}:0:{model}", "query_id": qid, "tenant": tenant,
              "model": model, "answer": answer, "confidence": 0.99, "latency_ms": 1.0, "prompt_tokens": 1,
              "completion_tokens": 1, "cost_usd": 0.0, "ok": True, "error": None, "fallback_from": None, "stage": 0,
              "ts_ms": int(time.time() * 1000)}
    return codec.encode("inference_response", record)


@dataclass
class View:
    """What the pipeline did, read once after every attack was launched: answers and dead letters."""

    per_topic: dict  # answer topic -> (tenant, query id) -> answer records (the scorer writes the shared
    letters: list[dict]  # topic and the tenant's own: "exactly once" holds per topic)

    def answered(self, tenant: str, qid: str) -> list[dict]:
        """The answers of one query on the topic where it has the most (so a repeat shows)."""
        return max((got.get((tenant, qid), []) for got in self.per_topic.values()), key=len, default=[])

    def lettered(self, topic: str, contains: str = "") -> list[dict]:
        return [d for d in self.letters if d["source_topic"] == topic and contains.lower() in d["reason"].lower()]


def _ok_or(err: str | None, what: str) -> str:
    return f"{what}: broker refused ({err})" if err else f"{what}: accepted by the broker"


async def forged_code(ctx: Ctx):
    """A forged decision and a forged response whose code writes a host file: first with a tenant's credential
    (the broker must refuse), then with the serve and model roles' rights (a compromised writer: the scorer
    may deliver it, but its code must not run outside the sandbox)."""
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    victim = ctx.tenants[0]
    errs, markers = {}, {}
    for who, settings in (("tenant", ctx.attacker), ("privileged", ctx.admin)):
        qid, markers[who] = f"forged-code-{who}", ctx.scratch / f"forged-code-ran-{who}"
        answer = (f"```python\nopen({str(markers[who])!r}, 'w').write('ran')\ndef add(a, b):\n    return a + b\n"
                  "assert add(1, 2) == 3\n```")
        key = _qkey(victim, qid)
        errs[who] = (await attacker_send(settings, topics.route_decisions, key,
                                         _forged_decision(codec, qid, victim, "Write a python function add(a, b).")),
                     await attacker_send(settings, topics.inference_responses, key,
                                         _forged_response(codec, qid, victim, answer)))

    def judge(view: View) -> list[Result]:
        out = []
        for who, name in (("tenant", "forged route decision + response with code, by a tenant"),
                          ("privileged", "forged response's code, by a writer with the roles' rights, "
                                         "runs outside the sandbox")):
            delivered = [a for a in view.answered(victim, f"forged-code-{who}") if "write('ran')" in a["answer"]]
            d_err, r_err = errs[who]
            ran = markers[who].exists()
            detail = (f"{_ok_or(d_err, 'decision')}; {_ok_or(r_err, 'response')}; code wrote the host marker: {ran}; "
                      f"forged answer delivered to {victim}: {delivered[0]['model'] if delivered else 'no'}")
            won = ran or (who == "tenant" and bool(delivered))
            out.append(Result(name, "route-decisions, inference-responses", "succeeded" if won else "refused", detail))
        return out
    return judge


async def non_json_plan(ctx: Ctx):
    """A decision whose plan is not JSON: a tenant may not write it; written with the serve role's rights it
    must be dead-lettered while the queries around it are answered."""
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    errs = {}
    for who, settings in (("tenant", ctx.attacker), ("privileged", ctx.admin)):
        qid = f"bad-plan-{who}"
        errs[who] = await attacker_send(settings, topics.route_decisions, _qkey(ctx.tenants[0], qid),
                                        _forged_decision(codec, qid, ctx.tenants[0], "What is 2+2?", plan="{not json"))

    def judge(view: View) -> list[Result]:
        out = []
        for who in ("tenant", "privileged"):
            letters = [d for d in view.lettered(topics.route_decisions) if f"bad-plan-{who}".encode() in d["payload"]]
            detail = _ok_or(errs[who], "decision") + (f"; dead-lettered: {letters[0]['reason'][:200]}" if letters
                                                      else "; no dead letter")
            out.append(Result(f"route decision whose plan is not JSON, by a {who} writer", "route-decisions",
                              "refused" if errs[who] or letters else "succeeded", detail))
        return out
    return judge


async def big_produce(ctx: Ctx):
    """`selfevolve produce` of a 1 MiB text: refused at the edge, before anything is sent."""
    from streams.produce import produce_lines

    line = json.dumps({"id": "big-1", "text": "x" * (1024 * 1024), "tenant": ctx.tenants[0]})
    try:
        sent, errors = await produce_lines(ctx.admin, [line])
        why = "; ".join(e for _, e in errors)[:300]
    except Exception as e:  # noqa: BLE001
        sent, why = 0, f"{type(e).__name__}: {e}"[:300]

    def judge(view: View) -> Result:
        detail = f"produce sent {sent}; its message: {why or '-'}"
        return Result("1 MiB query via selfevolve produce", "produce -> queries",
                      "refused" if sent == 0 else "succeeded", detail)
    return judge


async def gzip_bomb(ctx: Ctx):
    """A 10 MiB query gzip-compressed to a few kB, on the tenant's own topic: the broker takes the small batch,
    so the router must dead-letter it with a bounded prefix and go on."""
    codec = Codec.from_dir()
    tenant = "mallory"
    value = codec.encode("query", {"query_id": "gzip-1", "text": "y" * (10 * 1024 * 1024), "tenant": tenant,
                                   "metadata": {}, "ts_ms": int(time.time() * 1000)})
    topic = _tenant_topic(ctx.admin, "queries", tenant)
    err = await attacker_send(ctx.attacker, topic, _qkey(tenant, "gzip-1"), value, compression_type="gzip",
                              max_request_size=64 * 1024 * 1024)

    def judge(view: View) -> Result:
        letters = [d for d in view.lettered(topic) if d.get("payload_len", 0) >= 10 * 1024 * 1024]
        answered = bool(view.answered(tenant, "gzip-1"))
        detail = _ok_or(err, "10 MiB record, gzip") + (
            f"; dead-lettered with a {len(letters[0]['payload'])}-byte prefix: {letters[0]['reason'][:150]}"
            if letters else "; no dead letter") + f"; answered: {answered}"
        return Result("10 MiB gzip-compressed query", topic,
                      "refused" if (err or letters) and not answered else "succeeded", detail)
    return judge


async def junk_answers(ctx: Ctx):
    """64 random bytes on a tenant's answers topic: a tenant may not write there; injected with the serve
    role's rights, `selfevolve answers` must skip them and go on."""
    from streams.produce import print_answers

    tenant = ctx.tenants[0]
    topic = _tenant_topic(ctx.admin, "answers", tenant)
    junk = random.Random(64).randbytes(64)
    err = await attacker_send(ctx.attacker, topic, None, junk)
    injected = await attacker_send(ctx.admin, topic, None, junk)
    lines: list[str] = []
    try:
        await print_answers(ctx.admin, follow=False, tenant=tenant, out=lines.append, warn=lines.append)
        crash = ""
    except Exception as e:  # noqa: BLE001
        crash = f"{type(e).__name__}: {e}"

    def judge(view: View) -> list[Result]:
        return [Result("64 random bytes on a tenant's answers topic, by a tenant", topic,
                       "refused" if err else "succeeded", _ok_or(err, "64 random bytes")),
                Result("64 random bytes read by selfevolve answers", f"{topic} (print_answers)",
                       "succeeded" if crash else "refused",
                       _ok_or(injected, "injected as admin") + (f"; print_answers failed: {crash[:200]}" if crash
                                                                else f"; print_answers went on: {lines[-1:]}"))]
    return judge


async def reused_id(ctx: Ctx):
    """Tenant B sends a query whose id tenant A already used: identity is (tenant, id), both must be answered."""
    a, b = ctx.tenants[0], "mallory"
    first, second = ctx.valid(2)
    first.update(query_id="shared-id-1", tenant=a)
    second.update(query_id="shared-id-1", tenant=b)
    await send_queries(ctx.admin, [first])
    await asyncio.sleep(1.0)
    codec = Codec.from_dir()
    err = await attacker_send(ctx.attacker, _tenant_topic(ctx.admin, "queries", b), _qkey(b, "shared-id-1"),
                              codec.encode("query", second))

    def judge(view: View) -> Result:
        got_a, got_b = len(view.answered(a, "shared-id-1")), len(view.answered(b, "shared-id-1"))
        ok = got_a == 1 and (got_b == 1 or err is not None)
        return Result("a tenant reusing another tenant's query id", "queries", "refused" if ok else "succeeded",
                      f"{_ok_or(err, 'second query')}; answers: {a} {got_a}, {b} {got_b} (want 1 and 1)")
    return judge


async def foreign_feedback(ctx: Ctx):
    """Tenant mallory posts feedback on tenant alpha's query: on alpha's topic, on its own naming alpha, shared."""
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    victim = ctx.tenants[0]
    fields = {f["name"] for f in codec.schema("feedback")["fields"]}
    record = {"query_id": "v1-0", "model": "gpt-4-1106-preview", "quality": 0.0, "source": "forged",
              "ts_ms": int(time.time() * 1000), **({"tenant": victim} if "tenant" in fields else {})}
    value = codec.encode("feedback", record)
    own = _tenant_topic(ctx.admin, "feedback", "mallory")
    targets = list(dict.fromkeys([_tenant_topic(ctx.admin, "feedback", victim), own, topics.feedback]))
    errs = {t: await attacker_send(ctx.attacker, t, _qkey(victim, "v1-0"), value) for t in targets}

    def judge(view: View) -> Result:
        taken = [t for t, e in errs.items() if e is None and not view.lettered(t, "tenant")]
        detail = "; ".join(f"{t}: " + (f"refused ({e[:80]})" if e else "accepted, " + (
            f"dead-lettered: {view.lettered(t, 'tenant')[0]['reason'][:120]}" if view.lettered(t, "tenant")
            else "no dead letter")) for t, e in errs.items())
        detail += "; taken without a dead letter: " + (", ".join(taken) or "none")
        return Result("feedback for another tenant's query", "feedback topics", "succeeded" if taken else "refused",
                      detail)
    return judge


async def unauthenticated_decision(ctx: Ctx):
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    err = await attacker_send(ctx.anonymous, topics.route_decisions, b"anon",
                              _forged_decision(codec, "anon-1", ctx.tenants[0], "What is 2+2?"))

    def judge(view: View) -> Result:
        return Result("unauthenticated client writing route-decisions", topics.route_decisions,
                      "refused" if err else "succeeded", _ok_or(err, "decision"))
    return judge


async def tenant_strategy(ctx: Ctx):
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    value = codec.encode("strategy", {"theta_high": 0.99, "theta_low": 0.98, "domain": -1, "reason": "forged",
                                      "ts_ms": int(time.time() * 1000)})
    err = await attacker_send(ctx.attacker, topics.strategy, None, value)

    def judge(view: View) -> Result:
        return Result("tenant writing a strategy event", topics.strategy, "refused" if err else "succeeded",
                      _ok_or(err, "strategy (θh 0.99, θl 0.98)"))
    return judge


async def foreign_answers(ctx: Ctx):
    """Tenant mallory reads tenant alpha's answers, and the shared answers topic, with its own credential (at
    judging, when the answers exist)."""
    topics = (_tenant_topic(ctx.admin, "answers", ctx.tenants[0]), Topics.from_settings(ctx.admin).answers)

    async def judge(view: View) -> Result:
        read = {t: await _read_as(ctx.attacker, ctx.admin, t) for t in dict.fromkeys(topics)}
        there = {t: (await _read_as(ctx.admin, ctx.admin, t))[0] for t in read}  # what was there to read
        taken = [f"{t}: {n} records" for t, (n, _) in read.items() if n]
        detail = "; ".join(f"{t}: read {n} of the {there[t]} the admin reads" + (f" ({err})" if err else "")
                           for t, (n, err) in read.items())
        return Result("tenant reading another tenant's answers", ", ".join(read), "succeeded" if taken else "refused",
                      detail)
    return judge


async def _read_as(reader: Settings, admin: Settings, topic: str) -> tuple[int, str | None]:
    """How many records `reader` gets from every partition of `topic` in 5 s, and the error that stopped it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka_io import client_options, partitions_of

    import logging

    got = 0
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # an unauthorized fetch logs a warning per poll, thousands a second
    try:
        c = AIOKafkaConsumer(bootstrap_servers=reader.kafka_bootstrap, enable_auto_commit=False,
                             **client_options(reader))
        await asyncio.wait_for(c.start(), 15)
        try:
            c.assign([TopicPartition(topic, p) for p in await partitions_of(admin, topic)])
            await c.seek_to_beginning()
            for msgs in (await c.getmany(timeout_ms=5000)).values():
                got += len(msgs)
        finally:
            await c.stop()
    except Exception as e:  # noqa: BLE001 - every way the broker can say no is an outcome here
        return got, f"{type(e).__name__}: {e}"[:200]
    finally:
        quiet.setLevel(level)
    return got, None


async def state_overflow(ctx: Ctx, per_attack: int) -> Result:
    """Run last, alone: a decision (written with the serve role's rights) whose plan text is 500k two-byte
    characters fits the broker's limit as Avro, but is 3 MB as the JSON the scorer keeps in its changelog.
    The scorer must dead-letter it and answer the valid queries around it."""
    codec, topics = Codec.from_dir(), Topics.from_settings(ctx.admin)
    tenant, qid = ctx.tenants[0], "overflow-1"
    base = json.loads(codec.decode("route_decision", _forged_decision(codec, qid, tenant, "x"))["plan"])
    value = _forged_decision(codec, qid, tenant, "x",
                             plan=json.dumps({**base, "text": "\u00e9" * 500_000}, ensure_ascii=False))
    around = ctx.valid(per_attack)
    await send_queries(ctx.admin, around[: per_attack // 2])
    err = await attacker_send(ctx.admin, topics.route_decisions, _qkey(tenant, qid), value)
    await send_queries(ctx.admin, around[per_attack // 2:])
    want = {(q["tenant"], q["query_id"]) for q in around}
    lost, repeated = lost_and_repeated(await answer_counts(ctx.admin, ctx.tenants, want, timeout=90), want)
    letters = [d for d in await dead_letters(ctx.admin, timeout=30)
               if d["source_topic"] == topics.route_decisions and qid.encode() in d["payload"]]
    detail = (_ok_or(err, f"{len(value)}-byte decision") + (f"; dead-lettered: {letters[0]['reason'][:150]}"
                                                           if letters else "; no dead letter")
              + f"; valid queries around it unanswered: {len(lost)}")
    return Result("route decision whose state overflows the scorer's changelog, by a privileged writer",
                  topics.route_decisions, "succeeded" if lost or repeated else "refused", detail,
                  len(want), len(lost | repeated))


PIPELINE_ATTACKS = (forged_code, non_json_plan, big_produce, gzip_bomb, junk_answers, reused_id, foreign_feedback,
                    unauthenticated_decision, tenant_strategy, foreign_answers)
