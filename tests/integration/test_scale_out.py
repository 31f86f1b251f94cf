"""Many serve workers on one consumer group: exactly-once answers through a SIGKILL, replicated routing history,
a late joiner that catches up and then holds the same replica as its peers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import pytest

from infra.ports import port_run
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.wire.codec import Codec
from selfevolve.wire.topics import Topics
from streams.kafka_io import ensure_topics, producer, tail_consumer
from streams.stack import Stack, services

from logtail import log_tails  # noqa: E402 - a helper of the integration tier

DEMO = Settings().replay_dir
SAMPLES = list(load_dir(DEMO).samples)


@pytest.fixture
def scale_settings(make_settings) -> Settings:
    base = port_run(6)  # serve workers at base..base+3, the history worker and SQL after them
    return make_settings(web_port=base, history_web_port=base + 4, sql_port=base + 5, sink_flush_seconds=0.5)


def _get(port: int, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _wait_ready(settings: Settings, workers: list[int], timeout: float = 240) -> None:
    ports = [settings.web_port + i for i in workers] + [settings.history_web_port]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all((_get(p, "/ready") or {}).get("ready") for p in ports):
            return
        time.sleep(1)
    names = [f"streams-{i}" if i else "streams" for i in workers] + ["history"]
    raise AssertionError(f"not ready in {timeout}s: {[(p, _get(p, '/ready')) for p in ports]}\n"
                         + log_tails(settings, [n for n, p in zip(names, ports) if not _get(p, "/ready")]))


def _up(settings: Settings, serve_workers: int) -> Stack:
    stack = Stack(settings)
    stack.up(with_broker=False, serve_workers=serve_workers)
    _wait_ready(settings, list(range(serve_workers)))
    return stack


async def _produce(settings: Settings, samples, tenant: str) -> None:
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    await ensure_topics(settings)
    p = producer(settings)
    await p.start()
    try:
        for s in samples:
            rec = {"query_id": s.sample_id, "text": s.prompt, "tenant": tenant,
                   "metadata": {"sample_id": s.sample_id}, "ts_ms": int(time.time() * 1000)}
            await p.send(topics.queries, key=s.sample_id.encode(), value=codec.encode("query", rec))
        await p.flush()
    finally:
        await p.stop()


async def _read(settings: Settings, topic: str, kind: str, until, timeout: float) -> list[dict]:
    """Records of `topic` (read_committed, from the start) until until(records) or the timeout."""
    codec = Codec.from_dir()
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    out: list[dict] = []
    deadline = time.time() + timeout
    try:
        while not until(out) and time.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out += [codec.decode(kind, m.value) for m in msgs]
    finally:
        await consumer.stop()
    return out


def _answers(settings: Settings, want: int, timeout: float) -> list[dict]:
    topic = Topics.from_settings(settings).answers
    got = asyncio.run(_read(settings, topic, "answer", lambda r: len({a["query_id"] for a in r}) >= want, timeout))
    time.sleep(2)  # a repeat of the last answers may still be on its way: count it too
    return asyncio.run(_read(settings, topic, "answer", lambda r: len(r) >= len(got) + 10, 5))


def _assert_once(settings: Settings, samples, answers: list[dict]) -> None:
    ids = [a["query_id"] for a in answers]
    missing = {s.sample_id for s in samples} - set(ids)
    assert not missing, f"{len(missing)} queries unanswered; {_where_stuck(settings, missing)}"
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} repeated answers (read_committed)"
    # Each delivery reached the history topic every replica folds exactly once too.
    history = asyncio.run(_read(settings, Topics.from_settings(settings).history, "history",
                                lambda r: False, 8))
    delivered = [h["query_id"] for h in history if h["event"] == "delivery"]
    assert sorted(delivered) == sorted(set(ids)), "the history topic does not hold each delivery once"


def _where_stuck(settings: Settings, ids: set[str]) -> dict[str, object]:
    """How many of `ids` reached each stage's topic (read_committed), and the dead letters' reasons."""
    topics = Topics.from_settings(settings)
    found: dict[str, object] = {}
    for stage, kind in (("route-decisions", "route_decision"), ("inference-requests.replay", "inference_request"),
                        ("inference-responses", "inference_response"), ("scores", "score")):
        got = asyncio.run(_read(settings, settings.topic_prefix + stage, kind, lambda r: False, 4))
        found[stage] = len({r["query_id"] for r in got} & ids)
    letters = asyncio.run(_read(settings, topics.dead_letter, "dead_letter", lambda r: False, 4))
    found["dead letters"] = [(d["source_topic"], d["reason"][:200]) for d in letters]
    return found


def test_three_serve_workers_sigkill_one_every_query_answered_exactly_once(scale_settings):
    n = 300
    samples = SAMPLES[:n]
    stack = _up(scale_settings, 3)
    try:
        asyncio.run(_produce(scale_settings, samples, "kill"))
        partial = asyncio.run(_read(scale_settings, Topics.from_settings(scale_settings).answers, "answer",
                                    lambda r: len(r) >= n // 4, 180))
        assert 0 < len(partial) < n
        # Hard, mid-stream: its open transactions stay open until the workers its tasks move to fence them.
        stack.kill("streams-1", sig=signal.SIGKILL, timeout=5)
        answers = _answers(scale_settings, n, 300)
        _assert_once(scale_settings, samples, answers)
    finally:
        stack.down(with_broker=False)


def _replicas(settings: Settings, workers: list[int]) -> dict[int, dict]:
    return {i: _get(settings.web_port + i, "/replica") or {} for i in workers}


def _wait_same_offset(settings: Settings, workers: list[int], timeout: float = 60) -> dict[int, dict]:
    """The workers' replicas once all have folded the whole history topic."""
    end = len(asyncio.run(_read(settings, Topics.from_settings(settings).history, "history", lambda r: False, 5)))
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = _replicas(settings, workers)
        if all(r.get("records", -1) >= end and len({g["offset"] for g in got.values()}) == 1 for r in got.values()):
            return got
        time.sleep(1)
    return _replicas(settings, workers)


def test_a_late_joiner_catches_up_and_holds_the_replica_its_peer_holds(scale_settings):
    first, second = SAMPLES[:80], SAMPLES[80:160]
    stack = _up(scale_settings, 1)
    try:
        asyncio.run(_produce(scale_settings, first, "late"))
        _assert_once(scale_settings, first, _answers(scale_settings, len(first), 240))
        # Worker 1 joins after 80 deliveries: it must fold them (its snapshot folder is empty) before routing.
        (late,) = [s for s in services(scale_settings, serve_workers=2) if s.name == "streams-1"]
        stack.start(late)
        _wait_ready(scale_settings, [0, 1])
        assert (_get(scale_settings.web_port + 1, "/replica") or {}).get("records", 0) >= len(first)
        asyncio.run(_produce(scale_settings, second, "late"))  # both workers route now
        _assert_once(scale_settings, first + second, _answers(scale_settings, len(first + second), 240))
        got = _wait_same_offset(scale_settings, [0, 1])
        assert got[0]["records"] == got[1]["records"] == len(first + second), got
        # Same history, vectors, predictor, domains, thresholds and hierarchy: they route alike.
        assert got[0]["digest"] == got[1]["digest"], got
    finally:
        stack.down(with_broker=False)
