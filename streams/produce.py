"""User-facing producers and readers: JSON-lines queries and feedback in, answers out."""

from __future__ import annotations

import json
import sys
import time
from typing import Iterable

from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.errors import BrokerError, ValidationError
from selfevolve.wire.tenancy import DEFAULT_TENANT, check_tenant, record_key
from selfevolve.wire.topics import Topics
from selfevolve.wire.validation import parse_query_line, validate_query
from streams.kafka_io import ensure_topics, partitions_of, producer, tail_consumer


async def tenant_topic(settings: Settings, topic: str, tenant: str) -> str:
    """topic, once the broker says it exists (made by `selfevolve tenants add`, never by a tenant's client)."""
    if not await partitions_of(settings, topic):
        raise BrokerError(f"{topic} does not exist or this principal may not use it: run `selfevolve tenants "
                          f"add {tenant}` (as the admin) and use tenant {tenant}'s credential")
    return topic


async def produce_lines(settings: Settings, lines: Iterable[str],
                        tenant: str | None = None) -> tuple[int, list[tuple[int, str]]]:
    """Send each JSON line as a Query; unparseable or oversized lines are reported and skipped, never sent.

    The size rules are checked here, at the edge (the router checks them again for other producers): a text
    over max_query_bytes, or an encoded record over max_record_bytes. A line the broker refuses is reported
    too, with the broker's error.

    With `tenant`, the queries go to that tenant's own topic (queries.<tenant>, which the broker lets only
    that tenant write), stamped with the tenant; a line naming another tenant is refused. Without, they go
    to the shared queries topic (the admin's, under Kafka ACLs).
    """
    codec = Codec.from_dir()
    topics = Topics.from_settings(settings)
    if tenant is None:
        await ensure_topics(settings)
        topic = topics.queries
    else:
        topic = await tenant_topic(settings, topics.queries_for(check_tenant(tenant)), tenant)
    prod = producer(settings)
    await prod.start()
    pending, errors = [], []
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record, value = _query_record(settings, codec, line, tenant)
            except ValidationError as e:
                errors.append((n, str(e)))
                continue
            pending.append((n, await prod.send(topic, key=record_key(record).encode(), value=value)))
        await prod.flush()
    finally:
        await prod.stop()
    sent = 0
    for n, ack in pending:  # flushed: each future holds the broker's answer
        if ack.done() and ack.exception() is None:
            sent += 1
        else:
            why = ack.exception() if ack.done() else "no acknowledgement from the broker"
            errors.append((n, f"the broker refused the query: {why}"))
    return sent, sorted(errors)


def _query_record(settings: Settings, codec: Codec, line: str, tenant: str | None = None) -> tuple[dict, bytes]:
    """A line's Query record and its bytes, if both are within the edge's size limits."""
    record = validate_query(parse_query_line(line, int(time.time() * 1000)), settings.max_query_bytes)
    if tenant is not None and record["tenant"] not in (tenant, DEFAULT_TENANT):
        raise ValidationError(f"query {record['query_id']} says tenant {record['tenant']!r}, but --tenant is "
                              f"{tenant!r}: a tenant sends only its own queries")
    record["tenant"] = check_tenant(tenant or record["tenant"])
    value = codec.encode("query", record)
    if len(value) > settings.max_record_bytes:
        raise ValidationError(f"query {record['query_id']} is {len(value)} bytes encoded, over the "
                              f"{settings.max_record_bytes}-byte record limit (metadata counts too)")
    return record, value


async def print_answers(settings: Settings, *, follow: bool, tenant: str | None, out=print,
                        warn=lambda text: print(text, file=sys.stderr)) -> int:
    """Print answers (JSON per line) from the start of the topic; with follow, keep waiting. A record that is
    not an answer is skipped and counted; the count goes to `warn` (stderr) at the end.

    With `tenant`, reads that tenant's own answers topic (answers.<tenant>): the broker lets only that tenant
    (and the admin) read it, so no other tenant's answer is ever fetched. Without, reads the internal
    answers topic, which holds every tenant's answers (under Kafka security, only the admin may)."""
    codec = Codec.from_dir()
    skipped = 0
    topics = Topics.from_settings(settings)
    topic = topics.answers_for(check_tenant(tenant)) if tenant else topics.answers
    if not tenant:
        warn(f"reading {topic}, the internal answers topic of every tenant (give --tenant T for T's own)")
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    seen: set[str] = set()  # canonical keys: two tenants' same id are two answers
    idle_since = time.time()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            if batches:
                idle_since = time.time()
            for msgs in batches.values():
                for m in msgs:
                    try:
                        ans = codec.decode("answer", m.value)
                    except Exception:  # noqa: BLE001 - anyone may write junk to the topic; a reader goes on
                        skipped += 1
                        continue
                    # At-least-once delivery upstream: a reader keeps the first answer per query.
                    if record_key(ans) in seen:
                        continue
                    seen.add(record_key(ans))
                    row = {k: ans[k] for k in ("query_id", "tenant", "model", "strategy", "cost_usd", "answer")}
                    if not ans["model"]:
                        row["error"] = (f"no model answered ({', '.join(ans['models_called'])} all failed; "
                                        "their errors are in the inference_responses table)")
                    out(json.dumps(row))
            if not follow and not batches and time.time() - idle_since > 1.0:
                return len(seen)
    finally:
        await consumer.stop()
        if skipped:
            warn(f"skipped {skipped} record(s) on the answers topic that are not answers (undecodable)")


def feedback_record(line: str, tenant: str | None, ts_ms: int) -> dict:
    """One JSON line {id, model, quality (0..1), tenant?, source?} as a Feedback record of the tenant."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ValidationError(f"not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValidationError("a feedback line must be a JSON object")
    qid, model, quality = obj.get("id", obj.get("query_id")), obj.get("model"), obj.get("quality")
    if not isinstance(qid, str) or not qid.strip() or not isinstance(model, str) or not model:
        raise ValidationError("a feedback line needs string 'id' and 'model'")
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0.0 <= quality <= 1.0:
        raise ValidationError(f"feedback on {qid}: 'quality' must be a number from 0 to 1, got {quality!r}")
    said = obj.get("tenant", tenant or DEFAULT_TENANT)
    if tenant is not None and said != tenant:
        raise ValidationError(f"feedback on {qid} says tenant {said!r}, but --tenant is {tenant!r}")
    return {"query_id": qid, "tenant": check_tenant(said), "model": model, "quality": float(quality),
            "source": str(obj.get("source", "user")), "ts_ms": ts_ms}


async def produce_feedback(settings: Settings, lines: Iterable[str],
                           tenant: str | None = None) -> tuple[int, list[tuple[int, str]]]:
    """Send JSON-line verdicts: with `tenant`, to its own feedback.<tenant> topic (the serve worker accepts
    them only for queries that tenant owns); without, to the shared feedback topic (admin tooling)."""
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    topic = (await tenant_topic(settings, topics.feedback_for(check_tenant(tenant)), tenant) if tenant
             else topics.feedback)
    prod = producer(settings)
    await prod.start()
    sent, errors = 0, []
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = feedback_record(line, tenant, int(time.time() * 1000))
            except ValidationError as e:
                errors.append((n, str(e)))
                continue
            try:
                await prod.send_and_wait(topic, key=record_key(record).encode(), value=codec.encode("feedback", record))
                sent += 1
            except Exception as e:  # noqa: BLE001 - the broker's refusal is this line's error
                errors.append((n, f"the broker refused the feedback: {e}"))
    finally:
        await prod.stop()
    return sent, errors


async def call_model(prod, consumer, codec, topics, backend: str, tenant: str, model: str, qid: str, text: str,
                     timeout: float, strategy: str = "targeted") -> dict | None:
    """Send one inference request for `model` straight to `backend`'s request topic and wait for its response
    on `consumer` (a tail of inference-responses); None if none came within timeout (the demo's and the
    live-server test's direct call to a model worker)."""
    from selfevolve.wire.tenancy import query_key

    req = {"request_id": qid, "query_id": qid, "tenant": tenant, "model": model, "text": text, "strategy": strategy,
           "stage": 0, "attempt": 0, "fallback_from": None, "metadata": {}, "ts_ms": int(time.time() * 1000)}
    await prod.send_and_wait(topics.requests_for(backend), key=query_key(tenant, qid).encode(),
                             value=codec.encode("inference_request", req))
    deadline = time.time() + timeout
    while time.time() < deadline:
        for msgs in (await consumer.getmany(timeout_ms=500)).values():
            for m in msgs:
                r = codec.decode("inference_response", m.value)
                if r["request_id"] == qid:
                    return r
    return None

