"""Faust stats tables recover from their changelog: kill the history worker, restart, compare with the events."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from selfevolve import stats
from selfevolve.codec import Codec
from selfevolve.topics import Topics
from streams.demo import wait_ready
from streams.kafka_io import tail_consumer
from streams.replay import replay
from streams.stack import Stack

from test_pipeline import DEMO, free_ports  # noqa: E402 - shared helpers of the integration tier


async def _all_scores(settings, timeout: float = 30) -> list[dict]:
    codec = Codec.from_dir()
    consumer = await tail_consumer(settings, Topics.from_settings(settings).scores, from_beginning=True)
    out, idle = [], time.time()
    try:
        while time.time() - idle < 3 and time.time() - idle < timeout:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out += [codec.decode("score", m.value) for m in msgs]
                idle = time.time()
    finally:
        await consumer.stop()
    return out


def _tables(settings) -> dict:
    r = httpx.get(f"http://127.0.0.1:{settings.history_web_port}/stats", timeout=30)
    r.raise_for_status()
    return r.json()


def test_stats_tables_match_their_events_after_sigkill(make_settings):
    web, history_web, sql_port = free_ports(3)
    settings = make_settings(web_port=web, history_web_port=history_web, sql_port=sql_port)
    stack = Stack(settings)
    stack.up(with_broker=False)
    try:
        wait_ready(settings, timeout=240)
        report = asyncio.run(replay(settings, DEMO, warmup=120, limit=0, window=60, timeout_s=300))
        assert report.answers == 120
        time.sleep(3)
        before = _tables(settings)
        assert before["alltime"], "no statistics were kept"
        stack.kill("history", sig=signal.SIGKILL, timeout=5)
        stack.up(with_broker=False)
        wait_ready(settings, timeout=240)
        after = _tables(settings)
    finally:
        stack.down(with_broker=False)
    scores = [s for s in asyncio.run(_all_scores(settings)) if s["contested"]]
    expected: dict[str, dict] = {}
    for s in scores:
        d = str(s["domain"])
        expected[d] = stats.table_agg(expected.get(d, {}), s)
    assert after["alltime"] == json.loads(json.dumps(expected))
    assert after["alltime"] == before["alltime"]
