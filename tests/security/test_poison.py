"""Poison records on the real broker: none stops the serve pipeline, each leaves a small dead letter, readers go on.

The serve pipeline runs in this process (the router and scorer loops and a replay model worker, each a task
on the test broker) while valid queries are interleaved with: a ~1 MiB query, a 10 MiB query compressed
with gzip (small on the wire, 10 MiB once aiokafka decompresses it), a route decision whose plan is not
JSON, a query over the broker's size limit, and 64 random bytes on the answers topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time

import pytest
from aiokafka.errors import KafkaError

from selfevolve.wire.codec import Codec
from selfevolve.config import KAFKA_MESSAGE_MAX_BYTES, Settings
from selfevolve.wire.topics import Topics
from streams.kafka_io import ensure_topics, producer, tail_consumer
from streams.produce import print_answers, produce_lines
from streams.router import run_router
from streams.runtime import Runtime
from streams.scorer import run_scorer
from workers import model_worker

OVERHEAD = 16 * 1024  # a dead letter's fields besides the payload prefix: topic, capped reason, digest...


def _query(codec: Codec, qid: str, text: str) -> bytes:
    return codec.encode("query", {"query_id": qid, "text": text, "tenant": "t1", "metadata": {},
                                  "ts_ms": int(time.time() * 1000)})


def _forged_decision(codec: Codec, qid: str) -> bytes:
    """A route decision that is valid Avro but whose plan is not JSON (the scorer used to crash on it)."""
    record = {"query_id": qid, "tenant": "t1", "strategy": "targeted", "similarity": 0.0, "models": ["gpt-4"],
              "theta_high": 0.8, "theta_low": 0.5, "decision_ms": 0.0, "plan": "{this is not json",
              "ts_ms": int(time.time() * 1000)}
    return codec.encode("route_decision", record)


async def _read(settings: Settings, topic: str, until, timeout: float) -> list:
    """Raw messages of `topic` from its start (read_committed) until until(messages) or the timeout."""
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    out: list = []
    deadline = time.time() + timeout
    try:
        while not until(out) and time.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out += msgs
    finally:
        await consumer.stop()
    return out


def _answered(codec: Codec, msgs) -> list[str]:
    ids = []
    for m in msgs:
        try:
            ids.append(codec.decode("answer", m.value)["query_id"])
        except Exception:  # noqa: BLE001 - the random bytes this test put there
            continue
    return ids


async def _send(settings: Settings, topic: str, items: list[tuple[bytes, bytes]], **kw) -> None:
    p = producer(settings, **kw)
    await p.start()
    try:
        for key, value in items:
            await (await p.send(topic, key=key, value=value))
    finally:
        await p.stop()


async def _scenario(settings: Settings) -> dict:
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    await ensure_topics(settings)
    rt = Runtime.build(settings)
    await asyncio.to_thread(rt.serving)  # once, before the loops share it
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_router(rt, stop)), asyncio.create_task(run_scorer(rt, stop)),
             asyncio.create_task(model_worker.run(settings, ("replay",), f"poison-{settings.topic_prefix}", stop))]
    out: dict = {"bad": {}}
    try:
        good = [f"good-{i}" for i in range(9)]
        valid = [(q.encode(), _query(codec, q, f"What is {i} plus {i}?")) for i, q in enumerate(good)]
        mib = _query(codec, "one-mib", "x" * 1_000_000)
        bomb = _query(codec, "gzip-bomb", "y" * (10 * 1024 * 1024))
        forged = _forged_decision(codec, "forged")
        out["bad"] = {"one-mib": (topics.queries, mib), "gzip-bomb": (topics.queries, bomb),
                      "forged": (topics.route_decisions, forged)}
        await _send(settings, topics.queries, valid[:3] + [(b"one-mib", mib)] + valid[3:5])
        # Under the broker's limit compressed; the producer needs a larger max_request_size to send it at all.
        await _send(settings, topics.queries, [(b"gzip-bomb", bomb)], compression_type="gzip",
                    max_request_size=32 * 1024 * 1024)
        await _send(settings, topics.route_decisions, [(b"forged", forged)])
        await _send(settings, topics.queries, valid[5:7])
        await _send(settings, topics.answers, [(b"junk", random.Random(12).randbytes(64))])
        # Over the broker's message.max.bytes: the broker refuses it and the producer says so.
        with pytest.raises(KafkaError):
            too_big = _query(codec, "too-big", "z" * KAFKA_MESSAGE_MAX_BYTES)
            await _send(settings, topics.queries, [(b"too-big", too_big)], max_request_size=32 * 1024 * 1024)
        # At the edge, `selfevolve produce` refuses an oversized line and sends the others.
        lines = [json.dumps({"id": good[7], "text": "What is 7 plus 7?", "tenant": "t1"}),
                 json.dumps({"id": "edge-mib", "text": "w" * 1_000_000}),
                 json.dumps({"id": good[8], "text": "What is 8 plus 8?", "tenant": "t1"})]
        out["produced"] = await produce_lines(settings, lines)
        # Waits for every answer, or stops at once when a loop crashed (the poison got through).
        answers = await _read(settings, topics.answers, lambda ms: set(good) <= set(_answered(codec, ms))
                              or any(t.done() for t in tasks), 150)
        await asyncio.sleep(2)  # a repeat would come with the next batches: count it too
        out["answers"] = _answered(codec, await _read(settings, topics.answers, lambda ms: len(ms) > len(answers), 5))
        out["letters"] = await _read(settings, topics.dead_letter, lambda ms: len(ms) >= 3, 60)
        out["crashed"] = [t for t in tasks if t.done()]
        out["printed"], out["warned"] = [], []
        out["printed_n"] = await print_answers(settings, follow=False, tenant=None, out=out["printed"].append,
                                               warn=out["warned"].append)
        out["good"] = good
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
    for t in out["crashed"]:
        t.result()  # a crashed loop fails the test with its own traceback
    return out


def test_poison_records_are_dead_lettered_small_and_valid_queries_answered_once(make_settings):
    settings = make_settings()
    got = asyncio.run(_scenario(settings))
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    assert not got["crashed"]
    good = got["good"]
    assert got["produced"][0] == 2 and [n for n, _ in got["produced"][1]] == [2]
    assert "over the 32768-byte limit" in got["produced"][1][0][1]
    # Every valid query answered exactly once; no poison record is answered.
    assert sorted(got["answers"]) == sorted(good), got["answers"]
    letters = {}
    for m in got["letters"]:
        assert len(m.value) <= settings.dead_letter_payload_bytes + OVERHEAD, len(m.value)
        letter = codec.decode("dead_letter", m.value)
        letters[letter["payload_sha256"]] = letter
    assert len(got["letters"]) == 3, [codec.decode("dead_letter", m.value)["reason"] for m in got["letters"]]
    reasons = {"one-mib": "over the 262144-byte limit", "gzip-bomb": "over the 262144-byte limit",
               "forged": "Expecting"}
    for name, (topic, value) in got["bad"].items():
        letter = letters[hashlib.sha256(value).hexdigest()]
        assert letter["source_topic"] == topic
        assert letter["payload_len"] == len(value)
        assert letter["payload"] == value[: settings.dead_letter_payload_bytes]
        assert reasons[name] in letter["reason"], (name, letter["reason"])
    assert letters[hashlib.sha256(got["bad"]["gzip-bomb"][1]).hexdigest()]["reason"].startswith(
        f"record is {len(got['bad']['gzip-bomb'][1])} bytes")
    # The reader skips the random bytes, counts them, and prints every answer.
    assert got["printed_n"] == len(good) and len(got["printed"]) == len(good)
    assert "skipped 1 record(s) on the answers topic that are not answers (undecodable)" in got["warned"]
