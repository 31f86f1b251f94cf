"""The whole pipeline on the real broker and chdb: answers, ClickHouse rows, dead letters, crash recovery."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time

import pytest

from infra.ports import free_ports
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.wire.topics import Topics
from streams.demo import wait_ready
from streams.kafka_io import ensure_topics, producer, tail_consumer
from streams.stack_replay import replay
from streams.sqlclient import sql
from streams.stack import Stack


DEMO = Settings().replay_dir


@pytest.fixture
def stack_settings(make_settings) -> Settings:
    web, history_web, sql_port = free_ports(3)
    return make_settings(web_port=web, history_web_port=history_web, sql_port=sql_port, sink_flush_seconds=0.5)


@pytest.fixture
def stack(stack_settings):
    s = Stack(stack_settings)
    s.up(with_broker=False)
    try:
        wait_ready(stack_settings, timeout=240)
        yield s
    finally:
        s.down(with_broker=False)


def _count(settings: Settings, table: str) -> int:
    _, rows = sql(settings, f"SELECT count() FROM {table} FINAL")
    return int(rows[0][0])


def _wait_count(settings: Settings, table: str, want: int, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    n = -1
    while time.time() < deadline:
        n = _count(settings, table)
        if n >= want:
            return n
        time.sleep(1)
    return n


def test_500_queries_500_answers_500_rows(stack, stack_settings):
    report = asyncio.run(replay(stack_settings, DEMO, warmup=250, limit=250, window=125, timeout_s=300))
    assert report.queries == 500
    assert report.answers == 500
    assert report.duplicates == 0
    d = report.as_dict()
    assert sum(d["strategies"].values()) == 500
    for table in ("queries", "route_decisions", "answers"):
        assert _wait_count(stack_settings, table, 500) == 500, table
    for table in ("inference_requests", "inference_responses", "scores"):
        assert _wait_count(stack_settings, table, 500) >= 500, table
    # Feedback is posted only for models that were paid for, so it matches the responses' (query, model).
    n_fb = _wait_count(stack_settings, "feedback", 500)
    _, rows = sql(stack_settings, "SELECT count() FROM (SELECT query_id, model FROM feedback FINAL) AS f "
                                  "LEFT ANTI JOIN (SELECT query_id, model FROM inference_requests FINAL) AS r "
                                  "USING (query_id, model)")
    assert n_fb >= 500 and rows[0][0] == 0


async def _send_raw(settings: Settings, items: list[tuple[bytes, bytes]]) -> None:
    p = producer(settings)
    await p.start()
    try:
        for key, value in items:
            await p.send(Topics.from_settings(settings).queries, key=key, value=value)
        await p.flush()
    finally:
        await p.stop()


async def _read_all(settings: Settings, topic: str, kind: str, want: int, timeout: float,
                    distinct: str | None = None) -> list[dict]:
    """Records of `topic` from the start until `want` of them (or of distinct values of a field)."""
    codec = Codec.from_dir()
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    out: list[dict] = []
    deadline = time.time() + timeout

    def enough() -> bool:
        return len({r[distinct] for r in out} if distinct else out) >= want

    try:
        while not enough() and time.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out += [codec.decode(kind, m.value) for m in msgs]
    finally:
        await consumer.stop()
    return out


def _query(codec: Codec, qid: str, text: str) -> bytes:
    return codec.encode("query", {"query_id": qid, "text": text, "tenant": "t1", "metadata": {},
                                  "ts_ms": int(time.time() * 1000)})


def test_bad_events_go_to_dead_letter_and_good_ones_are_answered(stack, stack_settings):
    codec = Codec.from_dir()
    topics = Topics.from_settings(stack_settings)
    good = [f"good-{i}" for i in range(6)]
    bad = [
        (b"bad-bytes", b"\x00\x01 definitely not avro", "not Avro single-object encoding"),
        (b"wrong-schema", codec.encode("feedback", {"query_id": "q", "model": "m", "quality": 1.0,
                                                    "ts_ms": 1}), "wrong schema"),
        (b"missing-text", _query(codec, "missing-text", ""), "text"),
        (b"oversized", _query(codec, "oversized", "x" * 40_000), "over the 32768-byte limit"),
    ]
    items = [(q.encode(), _query(codec, q, f"What is {i} plus {i}?")) for i, q in enumerate(good[:3])]
    items += [(k, v) for k, v, _ in bad]
    items += [(q.encode(), _query(codec, q, f"Name a colour number {i}.")) for i, q in enumerate(good[3:])]
    asyncio.run(_send_raw(stack_settings, items))

    letters = asyncio.run(_read_all(stack_settings, topics.dead_letter, "dead_letter", len(bad), 120))
    assert len(letters) == len(bad)
    by_key = {}
    for letter in letters:
        assert letter["source_topic"] == topics.queries
        by_key[letter["payload_sha256"]] = letter  # the payload itself is a bounded prefix
    for key, value, reason in bad:
        digest = hashlib.sha256(value).hexdigest()
        assert digest in by_key, (key, [(l["source_topic"], l["reason"][:150]) for l in letters])
        assert reason in by_key[digest]["reason"], (key, by_key[digest]["reason"])
    answers = asyncio.run(_read_all(stack_settings, topics.answers, "answer", len(good), 180))
    assert sorted(a["query_id"] for a in answers) == sorted(good)
    assert _wait_count(stack_settings, "dead_letters", len(bad)) == len(bad)


def test_sigkill_mid_stream_every_query_answered_exactly_once(stack, stack_settings):
    codec = Codec.from_dir()
    topics = Topics.from_settings(stack_settings)
    n = 300
    from selfevolve.data.routerbench import load_dir

    samples = list(load_dir(DEMO).samples)[:n]

    async def produce_all():
        await ensure_topics(stack_settings)
        p = producer(stack_settings)
        await p.start()
        for s in samples:
            rec = {"query_id": s.sample_id, "text": s.prompt, "tenant": "kill", "metadata": {"sample_id": s.sample_id},
                   "ts_ms": int(time.time() * 1000)}
            await p.send(topics.queries, key=s.sample_id.encode(), value=codec.encode("query", rec))
        await p.flush()
        await p.stop()

    asyncio.run(produce_all())
    # Let part of the stream through, then kill every worker hard, mid-flight.
    partial = asyncio.run(_read_all(stack_settings, topics.answers, "answer", n // 4, 180))
    assert 0 < len(partial) < n
    for name in ("streams", "history", "model-worker-0"):
        stack.kill(name, sig=signal.SIGKILL, timeout=5)
    stack.up(with_broker=False)
    wait_ready(stack_settings, timeout=240)
    answers = asyncio.run(_read_all(stack_settings, topics.answers, "answer", n, 400, distinct="query_id"))
    time.sleep(2)  # a repeat of the last answers may still be on its way; count it too
    answers = asyncio.run(_read_all(stack_settings, topics.answers, "answer", len(answers) + 10, 5))
    ids = [a["query_id"] for a in answers]
    # No query is lost, and none is answered twice: the scorer's outputs, changelog and offsets commit in
    # one transaction, so the batch a kill interrupts is aborted (unseen by read_committed readers) and redone.
    missing = {s.sample_id for s in samples} - set(ids)
    assert not missing, f"{len(missing)} queries unanswered; {_where_stuck(stack_settings, missing)}"
    repeats = len(ids) - len(set(ids))
    assert repeats == 0, f"{repeats} repeated answers on the answers topic (read_committed)"
    # The sink was killed too: the history still holds every query and answer once (FINAL collapses repeats).
    for table in ("queries", "answers", "route_decisions"):
        assert _wait_count(stack_settings, table, n) == n, table


def _where_stuck(settings: Settings, ids: set[str]) -> dict[str, int]:
    """How many of `ids` reached each stage's table: shows where an unanswered query stopped."""
    time.sleep(3 * settings.sink_flush_seconds + 2)
    quoted = ",".join(f"'{i}'" for i in sorted(ids))
    stages = ("queries", "route_decisions", "inference_requests", "inference_responses", "scores")
    found = {t: int(sql(settings, f"SELECT uniqExact(query_id) FROM {t} WHERE query_id IN ({quoted})")[1][0][0])
             for t in stages}
    topics = Topics.from_settings(settings)
    decided = asyncio.run(_read_all(settings, topics.route_decisions, "route_decision", 10**6, 10))
    found["route-decisions topic"] = len({d["query_id"] for d in decided} & ids)
    found["dead letters"] = _count(settings, "dead_letters")
    return found
