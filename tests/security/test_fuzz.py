"""Fuzz: 1,000 random and mutated records on each input topic while valid queries flow; nothing exits or is lost."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest

from infra.kafka.security import add_tenant
from infra.ports import free_ports
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.routing.embed import embedding_dim
from selfevolve.wire.tenancy import DEFAULT_TENANT
from selfevolve.wire.topics import Topics
from selfevolve.wire.validation import validate_query
from selfevolve.wire.records import decision_from_record
from streams.demo import wait_ready
from bench.security import (answer_counts, dead_letters, demo_queries, lost_and_repeated,
                                    read_topic, send_queries, send_raw, stored_queries)
from streams.stack import Stack, operator_settings
from fuzzing import TENANTS, fuzz_records, targets  # the generator, beside this file

SEED = 20261203
PER_TOPIC = 1000  # the floor, for every input topic
N_VALID = 60


def must_dead_letter(codec: Codec, settings: Settings, topics: Topics, topic: str, kind: str,
                     value: bytes | None) -> bool:
    """Whether the reader of `topic` has to dead-letter `value`: it cannot be decoded as the reader decodes,
    or it breaks a rule the reader enforces (a query's size, id and text; the tenant of a tenant's topic; a
    decision's plan). Answers are left out: no pipeline stage reads them, their readers skip and count; so is
    the history topic: every serve worker's follower skips and counts (history_problems)."""
    if kind in ("answer", "history"):
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
    web, history_web, sql_port = free_ports(3)
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


def history_folds(codec: Codec, dim: int, values: list[bytes | None]) -> tuple[list[bool], int]:
    """Per record of the history topic, in its order, whether a serve worker folds it (else it skips it), and
    how many deliveries its history then holds; the rule of streams/runtime.py ServeState.apply: a record that
    decodes and is a verdict, a delivery the history holds already, or a delivery with a finite, non-zero vector
    of the history's width is folded; nothing else is (a zero vector has no domain: selfevolve/routing/domains)."""
    known: set[tuple[str, str]] = set()
    out = []
    for value in values:
        try:
            r = codec.decode("history", value)
        except Exception:  # noqa: BLE001 - whatever the follower would fail on
            out.append(False)
            continue
        key = (r["tenant"] or DEFAULT_TENANT, r["query_id"])
        raw = r["event"] == "delivery" and r["vector"] or b""
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float64) if len(raw) == 4 * dim else np.zeros(0)
        whole = bool(vec.size and np.isfinite(vec).all() and vec.any())
        out.append(r["event"] == "feedback" or (r["event"] == "delivery" and (key in known or whole)))
        if out[-1] and r["event"] == "delivery":
            known.add(key)
    return out, len(known)


def _replica(settings: Settings) -> dict | None:
    """The serve worker's /replica page (streams/app.py), or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/replica", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _history_settled(settings: Settings, topics: Topics, timeout: float = 120) -> tuple[list, dict | None]:
    """The history topic's committed records and the serve worker's /replica once it has folded the last of
    them, or as they stand after `timeout` (fuzz queries still being answered add deliveries meanwhile)."""
    deadline = time.time() + timeout
    while True:
        msgs = asyncio.run(read_topic(settings, topics.history, timeout=60, idle=2.0))
        page = _replica(settings)
        if (page and msgs and page.get("offset") == msgs[-1].offset + 1) or time.time() > deadline:
            return msgs, page
        time.sleep(2)


def history_problems(codec: Codec, settings: Settings, topics: Topics, items: list, positions: list,
                     letters: list[dict]) -> list[str]:
    """What the serve worker's history follower got wrong: it must have read the topic to its end, folded and
    skipped exactly what history_folds says of its records (the fuzz's among them), held the deliveries it
    folded, and dead-lettered none; the fuzz must have reached both outcomes."""
    fuzzed = {o for (t, _, _), (_, o) in zip(items, positions) if t == topics.history}
    msgs, page = _history_settled(settings, topics)
    folds, held = history_folds(codec, embedding_dim(settings), [m.value for m in msgs])
    want = {"offset": msgs[-1].offset + 1 if msgs else 0, "folded": sum(folds), "skipped": len(folds) - sum(folds),
            "records": held}
    got = {k: (page or {}).get(k) for k in want}
    ours = [f for m, f in zip(msgs, folds) if m.offset in fuzzed]
    lettered = sum(1 for d in letters if d["source_topic"] == topics.history)
    return [
        f"the serve worker's history replica {got} is not what the topic's {len(msgs)} records make: {want}"
        if got != want else "",
        f"{lettered} dead letters of history records (its followers skip and count them)" if lettered else "",
        f"{len(ours)} of the {len(fuzzed)} history fuzz records read back" if len(ours) != len(fuzzed) else "",
        f"the history fuzz was all folded or all skipped ({sum(ours)} of {len(ours)} folded)"
        if not 0 < sum(ours) < len(ours) else "",
    ]


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
                            rng, embedding_dim(settings)) for t, k in plan.items()}
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
    elapsed = time.time() - t0
    history = history_problems(codec, settings, topics, items, positions, letters)  # before exits: it waits
    after, crashed = _exits(stack), crashes(settings)
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
        *history,
    ]
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)
