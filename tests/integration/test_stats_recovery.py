"""The evolution agent's Faust tables recover from their changelogs and fold each score once: kill the history
worker, make it read every score again, and compare its statistics with a fold of the scores topic and its
gap windows with what they were before the kill."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from infra.ports import free_ports
from selfevolve.evolution import stats
from selfevolve.wire.codec import Codec
from selfevolve.wire.topics import Topics
from streams.app import app_id
from streams.demo import wait_ready
from streams.kafka_io import client_options, tail_consumer
from streams.stack_replay import replay
from streams.stack import Stack

from logtail import log_tails  # noqa: E402 - shared helpers of the integration tier
from test_pipeline import DEMO  # noqa: E402


async def _all_scores(settings, timeout: float = 30) -> tuple[list[dict], dict[int, int]]:
    """Every committed score, and per partition the offset just past its last score."""
    codec = Codec.from_dir()
    consumer = await tail_consumer(settings, Topics.from_settings(settings).scores, from_beginning=True)
    out, ends, idle = [], {}, time.time()
    try:
        while time.time() - idle < 3 and time.time() - idle < timeout:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out += [codec.decode("score", m.value) for m in msgs]
                ends.update({m.partition: m.offset + 1 for m in msgs})
                idle = time.time()
    finally:
        await consumer.stop()
    return out, ends


def _fold(scores: list[dict]) -> dict:
    expected: dict[str, dict] = {}
    for s in scores:
        if s["contested"]:
            d = str(s["domain"])
            expected[d] = stats.table_agg(expected.get(d, {}), s)
    return json.loads(json.dumps(expected))


def _traffic(tables: dict) -> dict[str, int]:
    return {d: g["traffic"] for d, g in tables["gaps"].items()}


def _tables(settings) -> dict:
    r = httpx.get(f"http://127.0.0.1:{settings.history_web_port}/stats", timeout=30)
    r.raise_for_status()
    return r.json()


async def _group_offsets(settings, commit: dict[int, int] | None = None) -> dict[int, int | None]:
    """The history worker's committed offsets on the scores topic; with `commit`, set them first."""
    topic = Topics.from_settings(settings).scores
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **client_options(settings),
                                group_id=app_id(settings, "history"),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        if commit is not None:
            await consumer.commit({TopicPartition(topic, p): o for p, o in commit.items()})
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


def _rewind_history_group(settings, timeout: float = 180) -> None:
    """Commit offset 0 for the killed worker's group, so its successor re-reads every score. The broker
    refuses until the dead member's session has expired and the group is empty."""
    deadline = time.time() + timeout
    while True:
        try:
            asyncio.run(_group_offsets(settings, commit={p: 0 for p in range(settings.topic_partitions)}))
            return
        except KafkaError:
            if time.time() > deadline:
                raise
            time.sleep(2)


def _wait(check, timeout: float, what: str, why=lambda: ""):
    deadline = time.time() + timeout
    while True:
        got = check()
        if got is not None:
            return got
        assert time.time() < deadline, f"timed out waiting for {what}\n{why()}"
        time.sleep(1)


def test_stats_tables_count_each_score_once_after_sigkill_and_full_redelivery(make_settings):
    web, history_web, sql_port = free_ports(3)
    settings = make_settings(web_port=web, history_web_port=history_web, sql_port=sql_port)
    stack = Stack(settings)
    stack.up(with_broker=False)
    try:
        wait_ready(settings, timeout=240)
        report = asyncio.run(replay(settings, DEMO, warmup=120, limit=0, window=60, timeout_s=300))
        assert report.answers == 120
        scores, ends = asyncio.run(_all_scores(settings))
        expected = _fold(scores)
        assert expected, "no contested scores: the test would prove nothing"
        # One gap-window outcome per delivered answer, the winner's.
        traffic = dict(Counter(str(s["domain"]) for s in scores if s["winner"]))
        # The history worker trails the answers; wait until its tables hold every score.
        before = _wait(lambda: (t := _tables(settings))["alltime"] == expected and _traffic(t) == traffic and t
                       or None, 120, "the evolution tables to fold every score")
        stack.kill("history", sig=signal.SIGKILL, timeout=5)
        # The worst case of at-least-once: every score is delivered again to the restored tables.
        _rewind_history_group(settings)
        stack.up(with_broker=False)
        wait_ready(settings, timeout=240)
        # Generous: on a loaded two-core machine the restored worker may take minutes to read it all again.
        _wait(lambda: (c := asyncio.run(_group_offsets(settings))) and all(
            (c[p] or 0) >= end for p, end in ends.items()) or None, 300, "the scores to be read again",
              lambda: f"ends {ends}, committed {asyncio.run(_group_offsets(settings))}\n"
                      + log_tails(settings, ["history"], 80))
        after = _tables(settings)
    finally:
        stack.down(with_broker=False)
    assert after["alltime"] == expected
    assert after["window"] == before["window"]
    assert after["positions"] == before["positions"]
    assert before["gaps"], "no gap windows: the test would prove nothing about them"
    assert (after["gaps"], after["gap_positions"]) == (before["gaps"], before["gap_positions"])
