"""Fuzz: 1,000 random and mutated records on each input topic while valid queries flow; nothing exits or is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import socket
import time
from collections import Counter

import pytest

from infra.kafka.security import add_tenant
from selfevolve.wire.codec import HEADER_LEN, Codec
from selfevolve.config import Settings
from selfevolve.wire.topics import Topics
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.validation import validate_query
from selfevolve.wire.records import decision_from_record
from streams.demo import wait_ready
from bench.security import (answer_counts, dead_letters, demo_queries, lost_and_repeated,
                                    read_topic, send_queries, send_raw, stored_queries)
from streams.stack import Stack, operator_settings

SEED = 20261203
PER_TOPIC = 1000  # the floor, for every input topic
N_VALID = 60
TENANTS = ("fa", "fb")
MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-instant-v1", "mistralai/mistral-7b-chat")
# (mutation, weight): what each fuzz record is made of, starting from a plausible record of the topic's kind.
MUTATIONS = (("bitflip", 20), ("truncate", 14), ("fingerprint", 8), ("other_kind", 8), ("random", 10),
             ("empty", 3), ("tombstone", 3), ("trailing", 8), ("hostile", 20), ("duplicate", 6))
HUGE_PER_TOPIC = 2  # records near the broker's size limit: one of random bytes, one valid Avro
NAN, INF = float("nan"), float("inf")
BIG = "x" * 100_000  # a hostile string of 100 KB, picked for one hostile value in 30 (they add up on the broker)
BAD_STRINGS = ("", " ", "\x00", "nul\x00inside", "../../../etc/passwd", "'; DROP TABLE queries; --",
               "{not json", "null", "[]", '{"models": 5}', "no-such-model", "\u202e\u2028\ufeff", "other-tenant",
               "UPPER/Case")
BAD_DOUBLES = (NAN, INF, -INF, -1e308, 1e308, -1.0, 2.0)
BAD_INTS = (-1, -(2**31), 2**31 - 1)
BAD_LONGS = (-1, -(2**63), 2**63 - 1)


def _port_list(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# ---- the generator: pure, seeded --------------------------------------------------------------------------

def targets(topics: Topics) -> dict[str, str]:
    """Every topic a worker of the pipeline reads, with the kind it expects (one tenant's query and feedback
    topics stand for all of them: the serve role reads them by pattern)."""
    out = {topics.queries: "query", topics.route_decisions: "route_decision",
           topics.inference_responses: "inference_response", topics.requests_for("replay"): "inference_request",
           topics.feedback: "feedback", topics.model_events: "model_event", topics.strategy: "strategy",
           topics.scores: "score", topics.answers: "answer"}
    out.update({topics.queries_for(TENANTS[0]): "query", topics.feedback_for(TENANTS[0]): "feedback"})
    return out


def _plausible(name: str, typ, rng: random.Random, i: int, tenant: str):
    """A value a real writer could have put in field `name` of Avro type `typ`."""
    named = {"query_id": f"fz-{i}", "request_id": f"fz-{i}:0:{MODELS[0]}", "tenant": tenant,
             "model": rng.choice(MODELS), "text": f"Fuzz question {i}: what is {i} plus one?",
             "strategy": "targeted", "kind": rng.choice(("promote", "demote", "activate", "version")),
             "new_role": rng.choice(("student", "ta", "teacher")), "old_role": None, "checkpoint": None,
             "theta_high": 0.8, "theta_low": 0.5, "source": "", "error": None, "fallback_from": None,
             "answer": "4", "ok": True, "stage": 0, "attempt": 0, "quality": 1.0, "mode": "replay"}
    if name in named:
        return named[name]
    if isinstance(typ, list):
        return None if "null" in typ else _plausible(name, typ[0], rng, i, tenant)
    if isinstance(typ, dict):
        return [rng.choice(MODELS)] if typ.get("type") == "array" else {}
    return {"string": "fuzz", "double": round(rng.random(), 3), "int": rng.randrange(4),
            "long": int(time.time() * 1000), "boolean": rng.random() < 0.5, "bytes": b"fuzz"}[typ]


def _plan(record: dict) -> str:
    from selfevolve.routing import Decision

    values = dict(query_id=record["query_id"], tenant=record.get("tenant", "fuzz"), text="Fuzz question?",
                  strategy="targeted", similarity=0.0, models=tuple(record["models"]), escalation=(),
                  escalate_below=0.0, expected_cost=0.0, max_cost=0.0, budget=None, estimates={}, costs={},
                  fallbacks={}, reason="fuzz", theta_high=0.8, theta_low=0.5, cost_lambda=0.1)
    return json.dumps({f.name: values.get(f.name) for f in dataclasses.fields(Decision)})


def base_record(codec: Codec, kind: str, rng: random.Random, i: int, tenant: str) -> dict:
    fields = [f for f in codec.schema(kind)["fields"] if f["name"] != "version"]
    record = {f["name"]: _plausible(f["name"], f["type"], rng, i, tenant) for f in fields}
    if kind == "route_decision":
        record["plan"] = _plan(record)
    return record


def _bad_string(rng: random.Random) -> str:
    return BIG if rng.random() < 1 / 30 else rng.choice(BAD_STRINGS)


def _hostile_value(field: dict, value, rng: random.Random):
    typ = field["type"]
    if isinstance(typ, list):
        return rng.choice((None, _bad_string(rng)))
    if isinstance(typ, dict):
        if typ.get("type") == "array":
            return rng.choice(([], ["no-such-model"], ["", "\x00"], [MODELS[0]] * 50))
        return rng.choice(({"": ""}, {"k\x00": _bad_string(rng)}, {f"k{j}": "v" for j in range(1000)}))
    return {"string": lambda: _bad_string(rng), "double": lambda: rng.choice(BAD_DOUBLES),
            "int": lambda: rng.choice(BAD_INTS), "long": lambda: rng.choice(BAD_LONGS),
            "boolean": lambda: not value, "bytes": lambda: b"\x00" * 1000}[typ]()


def hostile(codec: Codec, kind: str, record: dict, rng: random.Random) -> bytes:
    """Valid Avro of `kind` whose values are hostile: empty ids, NUL bytes, 100 KB strings, NaN, negative
    timestamps, unknown models, plans that are not JSON, another tenant."""
    fields = [f for f in codec.schema(kind)["fields"] if f["name"] != "version"]
    out = dict(record)
    for f in rng.sample(fields, k=min(len(fields), rng.randint(1, 3))):
        out[f["name"]] = _hostile_value(f, out[f["name"]], rng)
    return codec.encode(kind, out)


def mutate(codec: Codec, kind: str, good: bytes, record: dict, rng: random.Random, how: str,
           sent: list[bytes | None]) -> bytes | None:
    if how == "bitflip":
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if how == "truncate":
        return good[: rng.randrange(len(good))]
    if how == "fingerprint":
        return good[:2] + rng.randbytes(8) + good[HEADER_LEN:]
    if how == "other_kind":
        other = rng.choice([k for k in codec.kinds() if k != kind])
        return codec.encode(other, base_record(codec, other, rng, rng.randrange(10**6), "fuzz"))
    if how == "random":
        return rng.randbytes(rng.randrange(0, 200))
    if how == "empty":
        return b""
    if how == "tombstone":
        return None
    if how == "trailing":
        return good + rng.randbytes(rng.randint(1, 64))
    if how == "hostile":
        return hostile(codec, kind, record, rng)
    return rng.choice(sent) if sent else good  # duplicate: a record already sent, verbatim


def huge(codec: Codec, kind: str, record: dict, size: int, valid: bool, rng: random.Random) -> bytes:
    """A value of about `size` bytes: random bytes behind a valid header, or valid Avro with one huge string."""
    if not valid:
        return codec.encode(kind, record)[:HEADER_LEN] + rng.randbytes(size - HEADER_LEN)
    if kind == "route_decision":  # a workable decision whose text is 2-byte characters: 3x as JSON (\u00e9)
        plan = {**json.loads(record["plan"]), "text": "\u00e9" * ((size - 8192) // 2)}
        return codec.encode(kind, {**record, "plan": json.dumps(plan, ensure_ascii=False)})
    field = next(f["name"] for f in codec.schema(kind)["fields"] if f["type"] == "string"
                 and f["name"] not in ("query_id", "tenant"))
    return codec.encode(kind, {**record, field: "h" * (size - 4096)})


def fuzz_records(codec: Codec, topic: str, kind: str, tenant: str, n: int, size_limit: int,
                 rng: random.Random) -> list[tuple[bytes | None, bytes | None, str]]:
    """n (key, value, mutation) fuzz records for one topic; ids start with `fz-`, which valid traffic never uses."""
    names, weights = zip(*MUTATIONS)
    out: list[tuple[bytes | None, bytes | None, str]] = []
    sent: list[bytes | None] = []
    for i in range(n):
        record = base_record(codec, kind, rng, rng.randrange(10**6), tenant)
        good = codec.encode(kind, record)
        if i < HUGE_PER_TOPIC:
            how, value = "huge", huge(codec, kind, record, size_limit - 16 * 1024, valid=i % 2 == 1, rng=rng)
        else:
            how = rng.choices(names, weights)[0]
            value = mutate(codec, kind, good, record, rng, how, sent)
        # Mostly the key a real writer uses ((tenant, id): one query's events share a partition), else junk.
        proper = query_key(record.get("tenant", tenant), record.get("query_id", "fz")).encode()
        key = rng.choice((proper, proper, proper, None, rng.randbytes(16), b"k" * 1000))
        key = b"tombstone" if key is None and value is None else key  # Kafka needs one of the two
        sent.append(value)
        out.append((key, value, how))
    return out


def must_dead_letter(codec: Codec, settings: Settings, topics: Topics, topic: str, kind: str,
                     value: bytes | None) -> bool:
    """Whether the reader of `topic` has to dead-letter `value`: it cannot be decoded as the reader decodes,
    or it breaks a rule the reader enforces (a query's size, id and text; the tenant of a tenant's topic; a
    decision's plan). Answers are left out: no pipeline stage reads them, their readers skip and count."""
    if kind == "answer":
        return False
    if kind in ("route_decision", "inference_response"):  # the scorer reads both from one merged stream
        found = codec.kind_of(value)
        kind = found if found in ("route_decision", "inference_response") else "inference_response"
    try:
        record = codec.decode(kind, value)
        if kind == "query":
            if len(value) > settings.max_record_bytes:
                return True
            validate_query(record, settings.max_query_bytes)
            owner = _owner(topics, topic)
            if owner is not None and record["tenant"] != owner:
                return True
        if kind == "feedback" and _owner(topics, topic) is not None:
            return True  # on a tenant's topic, about a query that tenant does not own (fz-* ids are nobody's)
        if kind == "route_decision":
            decision_from_record(record)
    except Exception:  # noqa: BLE001 - whatever the reader would fail on
        return True
    return False


def _redelivered(codec: Codec, decided: set, partition: int, topic: str, plan: dict, value: bytes | None) -> bool:
    """Whether the scorer takes `value` for a re-delivery of a decision it has seen on this partition (the
    same (tenant, id) without a source of its own); records each decodable decision of its two topics."""
    if plan[topic] not in ("route_decision", "inference_response") or codec.kind_of(value) != "route_decision":
        return False
    try:
        d = codec.decode("route_decision", value)
    except Exception:  # noqa: BLE001 - undecodable: not a decision at all
        return False
    key = (partition, d["tenant"], d["query_id"])
    again = key in decided and not d.get("source")
    decided.add(key)
    return again


def _untraced(settings: Settings, topics: Topics, records: dict, letters: list[dict], wait_s: float) -> dict:
    """Of `records` ((topic, partition, offset) -> (tenant, query id)), those neither dead-lettered nor
    answered yet; waits up to wait_s for forged decisions still going through their calls and fallbacks."""
    deadline = time.time() + wait_s
    while True:
        lettered = {(d["source_topic"], d["partition"], d["offset"]) for d in letters}
        answered = answered_ids(settings)
        # A decision written under another key than its (tenant, id) sits on a partition its responses never
        # reach: their dead letters ("a response to no call this scorer made") are where its trail ends.
        orphaned = [d["payload"] for d in letters if d["source_topic"] == topics.inference_responses]
        left = {k: v for k, v in records.items() if k not in lettered and v[1] not in answered
                and not any(v[1].encode() in p for p in orphaned)}
        if not left or time.time() > deadline:
            return left
        time.sleep(5)
        letters = asyncio.run(dead_letters(settings, timeout=30))


def _undecodable(codec: Codec, kind: str, value: bytes | None) -> bool:
    try:
        codec.decode(kind, value)
    except Exception:  # noqa: BLE001
        return True
    return False


def _reader_skips(settings: Settings, junk: int) -> str:
    """'' if `selfevolve answers` reads the shared answers topic to its end and counts exactly the `junk`
    undecodable records the fuzz put there; else what went wrong."""
    from streams.produce import print_answers

    said: list[str] = []
    try:
        asyncio.run(print_answers(settings, follow=False, tenant=None, out=lambda _: None, warn=said.append))
    except Exception as e:  # noqa: BLE001 - the finding itself
        return f"selfevolve answers failed on the fuzzed answers topic: {type(e).__name__}: {e}"
    skipped = sum(int(n) for line in said for n in re.findall(r"skipped (\d+)", line))
    return "" if skipped == junk else f"selfevolve answers skipped {skipped} records, the fuzz wrote {junk} junk ones"


def _plan_names(codec: Codec, items: list, positions: list, where: tuple) -> str:
    """For a decision, the (tenant, query id) its plan names when they differ from the record's own."""
    for (topic, _, value), (p, o) in zip(items, positions):
        if (topic, p, o) == where and codec.kind_of(value) == "route_decision":
            record = codec.decode("route_decision", value)
            try:
                plan = json.loads(record["plan"])
                named = (plan.get("tenant"), plan.get("query_id"))
            except (ValueError, AttributeError):
                return "plan unreadable"
            return "" if named == (record["tenant"], record["query_id"]) else f"its plan names {named}"
    return ""


def _owner(topics: Topics, topic: str) -> str | None:
    return topics.tenant_of(topic)


def answered_ids(settings: Settings) -> set[str]:
    """Query ids with an answer on the shared answers topic, which carries every tenant's answers."""
    codec = Codec.from_dir()
    found: set[str] = set()
    for m in asyncio.run(read_topic(settings, Topics.from_settings(settings).answers, timeout=30, idle=2.0)):
        try:
            found.add(codec.decode("answer", m.value)["query_id"])
        except Exception:  # noqa: BLE001 - the fuzz put garbage on the answers topic too
            continue
    return found


# ---- the test -----------------------------------------------------------------------------------------------

@pytest.fixture
def fuzz_stack(make_settings):
    web, history_web, sql_port = _port_list(3)
    settings = make_settings(web_port=web, history_web_port=history_web, sql_port=sql_port, sink_flush_seconds=0.5)
    admin = operator_settings(settings)  # the super user where the broker is secured: tooling's principal
    for tenant in (*TENANTS, "fuzz"):
        add_tenant(admin, tenant)  # its topics (and credential and ACLs, unused here), before workers start
    stack = Stack(settings)
    stack.up(with_broker=False)
    try:
        wait_ready(settings, timeout=240)
        yield admin, stack
    finally:
        stack.down(with_broker=False)


def _exits(stack: Stack) -> dict[str, tuple]:
    """Per worker: its pid and what the supervisor counted (restarts, failures); any change is an exit."""
    return {name: (stack.pid(name), w.get("restarts", 0), w.get("failures", 0))
            for name, w in stack.restarts().items()}


def interleave(codec: Codec, topics: Topics, valid: list[dict], fuzz: dict, rounds: int = 10) -> tuple[list, list]:
    """(topic, key, value) items in send order, and each one's (topic, mutation, value) or None for a valid
    query: each round sends a tenth of the valid queries and a tenth of every topic's fuzz."""
    items, origin = [], []
    for r in range(rounds):
        for q in valid[r::rounds]:
            items.append((topics.queries, q["query_id"].encode(), codec.encode("query", q)))
            origin.append(None)
        for topic, records in fuzz.items():
            for key, value, how in records[r::rounds]:
                items.append((topic, key, value))
                origin.append((topic, how, value))
    return items, origin


def expectations(codec: Codec, settings: Settings, topics: Topics, plan: dict, items: list, positions: list,
                 origin: list) -> tuple[dict, dict]:
    """({(topic, partition, offset): mutation} that must be dead-lettered, {(topic, partition, offset):
    (tenant, query id)} of decodable queries and decisions, which must be dead-lettered or answered)."""
    expected, traced = {}, {}
    decided: set[tuple] = set()  # (partition, tenant, query id) of the decisions the scorer has seen so far
    readers = {"query": "query", "route_decision": "route_decision", "inference_response": "route_decision"}
    for (topic, _, value), (p, o), src in zip(items, positions, origin):
        if src is None:
            continue
        kind = plan[topic]
        if _redelivered(codec, decided, p, topic, plan, value):
            continue  # a decision for a (tenant, id) the scorer holds, without another source: a re-delivery,
            # ignored by design before its plan is read (streams/scorer.py); its first copy was judged
        if must_dead_letter(codec, settings, topics, topic, kind, value):
            expected[(topic, p, o)] = src[1]
        elif codec.kind_of(value) == readers.get(kind, "not read"):
            # A decision on the responses topic is read as a decision. The rest that decodes is used or
            # ignored by design: a response to no call (dead-lettered), feedback on unknown queries,
            # requests for unknown prompts (answered ok=false), events that only tune evolution, and
            # anything on the answers topic, which no stage reads (its readers skip what is not an answer).
            rec = codec.decode(codec.kind_of(value), value)
            traced[(topic, p, o)] = (rec.get("tenant", "default"), rec["query_id"])
    return expected, traced


def dup_letter(topics: Topics, letters: list[dict], q: dict, at: tuple) -> dict | None:
    """The dead letter of a re-sent valid query q (sent at `at`): the router's, or a later stage's, which names
    it in its reason and its payload (a decision starts with the query id)."""
    return next((d for d in letters if (d["source_topic"], d["partition"], d["offset"]) == (topics.queries, *at)
                 or ("duplicate" in d["reason"].lower() and q["query_id"].encode() in d["payload"]
                     and d["source_topic"] != topics.queries)), None)


def _feedback_id(codec: Codec, value: bytes | None) -> str | None:
    try:
        return codec.decode("feedback", value)["query_id"]
    except Exception:  # noqa: BLE001 - undecodable: it must be dead-lettered in any case
        return None


def crashes(settings: Settings) -> list[str]:
    return [f"{p.name}: {line.strip()[:300]}" for p in sorted((settings.home / "logs").glob("*.log"))
            for line in p.read_text(errors="replace").splitlines() if "Crashed reason" in line]


def test_fuzz_every_input_topic_while_valid_queries_flow(fuzz_stack):
    settings, stack = fuzz_stack
    codec, topics, rng = Codec.from_dir(), Topics.from_settings(settings), random.Random(SEED)
    before = _exits(stack)
    assert {"streams", "history", "model-worker-0"} <= before.keys() and all(p for p, _, _ in before.values()), before
    valid = demo_queries(settings, N_VALID, TENANTS, prefix="ok-", seed=SEED)
    want = {(q["tenant"], q["query_id"]) for q in valid}
    plan = targets(topics)
    fuzz = {t: fuzz_records(codec, t, k, _owner(topics, t) or "fuzz", PER_TOPIC, settings.kafka_max_message_bytes,
                            rng) for t, k in plan.items()}
    items, origin = interleave(codec, topics, valid, fuzz)
    t0 = time.time()
    positions = asyncio.run(send_raw(settings, items))
    asyncio.run(answer_counts(settings, TENANTS, want, timeout=120))
    # Valid queries sent again verbatim once answered: the same (tenant, id), a duplicate to dead-letter.
    dups = list(zip(valid[:5], asyncio.run(send_queries(settings, valid[:5]))))
    expected, traced = expectations(codec, settings, topics, plan, items, positions, origin)

    def enough(letters):
        return (expected.keys() <= {(d["source_topic"], d["partition"], d["offset"]) for d in letters}
                and all(dup_letter(topics, letters, q, at) for q, at in dups))

    letters = asyncio.run(dead_letters(settings, timeout=120, done=enough))
    lettered = {(d["source_topic"], d["partition"], d["offset"]) for d in letters}
    missing = {k: v for k, v in expected.items() if k not in lettered}
    # A fuzz query that decoded may have been answered first: its tenant then owns it, and a verdict on it
    # from that tenant is applied, not dead-lettered (which comes first is timing, not a rule).
    owned, values = answered_ids(settings), {(t, *at): v for (t, _, v), at in zip(items, positions)}
    missing = {k: v for k, v in missing.items()
               if not (plan[k[0]] == "feedback" and _feedback_id(codec, values[k]) in owned)}
    lost, repeated = lost_and_repeated(asyncio.run(answer_counts(settings, TENANTS, want, timeout=10)), want)
    elapsed, after, crashed = time.time() - t0, _exits(stack), crashes(settings)
    not_dup = [d["reason"][:200] if d else "no dead letter" for d in (dup_letter(topics, letters, q, at)
                                                                     for q, at in dups)
               if d is None or "duplicate" not in d["reason"].lower()]
    stored = stored_queries(settings, valid)
    dropped = _untraced(settings, topics, traced, letters, wait_s=90)
    junk = sum(1 for _, value, _ in fuzz[topics.answers] if _undecodable(codec, "answer", value))
    # Every failure at once: one run of this test is the owner's whole list of what the fuzz broke.
    problems = [
        f"a worker exited or was restarted: before {before}, after {after}" if after != before else "",
        f"Faust/worker crashes in the logs: {crashed[:8]}" if crashed else "",
        f"{len(lost)} of {len(want)} valid queries unanswered after {elapsed:.0f}s: {sorted(lost)[:10]}"
        if lost else "",
        f"valid queries answered more than once: {sorted(repeated)[:10]}" if repeated else "",
        f"{len(missing)} of {len(expected)} bad records have no dead letter (by topic "
        f"{dict(Counter(t for t, _, _ in missing))}); e.g. {list(missing.items())[:10]}" if missing else "",
        f"re-sent valid queries without a 'duplicate' dead letter: {not_dup}" if not_dup else "",
        f"{len(want - stored)} valid queries missing from ClickHouse (the sink read every fuzz record too): "
        f"{sorted(want - stored)[:10]}" if want - stored else "",
        _reader_skips(settings, junk),
        f"{len(dropped)} decodable fuzz queries/decisions neither answered nor dead-lettered: "
        f"{[(k, v, _plan_names(codec, items, positions, k)) for k, v in list(dropped.items())[:10]]}"
        if dropped else "",
    ]
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)
