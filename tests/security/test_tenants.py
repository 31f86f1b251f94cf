"""Tenants on the real broker and store: (tenant, id) is a query's identity, each tenant reads only its own
answers (the broker enforces it), a reused id is dead-lettered, and feedback comes only from the owner.

The pipeline runs in this process (router, scorer and feedback tasks, a model worker, the sink), each with
the credentials its role would have in production being the admin's here; the tenants use their own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

from infra.kafka.security import add_tenant, tenant_user
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.wire.topics import Topics
from streams.feedback import run_feedback
from streams.cli import _tenants
from streams.kafka_io import admin_client, client_options, tail_consumer
from streams.produce import print_answers, produce_feedback, produce_lines
from streams.router import run_router
from streams.runtime import Runtime
from streams.scorer import run_scorer
from streams.sink import run_sink
from streams.store import HistoryStore
from workers.model_worker import run as run_model_worker

A, B = "ta", "tb"


async def _pipeline(settings, stop: asyncio.Event, store) -> list[asyncio.Task]:
    serve = Runtime.build(settings)
    await asyncio.to_thread(serve.serving)  # load the embedder once, before the tasks need it
    history = Runtime.build(settings, owns_history=False)
    return [asyncio.create_task(c) for c in (
        run_router(serve, stop), run_scorer(serve, stop), run_feedback(serve, stop),
        run_model_worker(settings, ("replay",), f"tenants-{uuid.uuid4().hex[:6]}", stop),
        run_sink(history, store, stop))]


async def _answers(settings, tenant: str, want: int, timeout: float = 60) -> list[dict]:
    """The answers on the tenant's own topic, read with the tenant's credentials, once `want` are there."""
    deadline = time.time() + timeout
    while True:
        rows: list[str] = []
        await print_answers(settings, follow=False, tenant=tenant, out=rows.append, warn=lambda _: None)
        if len(rows) >= want or time.time() > deadline:
            return [json.loads(r) for r in rows]
        await asyncio.sleep(1)


async def _dead_letters(settings, want, timeout: float = 60) -> list[dict]:
    codec, topic = Codec.from_dir(), Topics.from_settings(settings).dead_letter
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    out: list[dict] = []
    deadline = time.time() + timeout
    try:
        while not want(out) and time.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out += [codec.decode("dead_letter", m.value) for m in msgs]
    finally:
        await consumer.stop()
    return out


async def _read_as(settings, topic: str) -> tuple[int, int]:
    """(records fetched, the broker's error code describing the topic) for a client with these credentials."""
    async with admin_client(settings) as admin:
        (described,) = await admin.describe_topics([topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                **client_options(settings))
    await consumer.start()

    async def fetch() -> dict:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return await consumer.getmany(timeout_ms=3000)

    try:
        got = await asyncio.wait_for(fetch(), 10)
    except (TopicAuthorizationFailedError, asyncio.TimeoutError):
        got = {}  # refused outright, or offsets the broker never gives out (it waits out its request timeout)
    finally:
        await consumer.stop()
    return sum(len(m) for m in got.values()), described["error_code"]


def _line(qid: str, sample) -> str:
    return json.dumps({"id": qid, "text": sample.prompt, "metadata": {"sample_id": sample.sample_id}})


def _tenant_settings(settings, folder) -> Settings:
    """What tenant T's own client builds: its credential comes only from the folder `tenants add` wrote."""
    return Settings.load(kafka_bootstrap=settings.kafka_bootstrap, topic_prefix=settings.topic_prefix,
                         home=settings.home, kafka_ca_file=settings.kafka_ca_file, topic_partitions=1,
                         secrets_dir=folder)


@contextlib.asynccontextmanager
async def _running_pipeline(settings):
    """The pipeline's tasks and the store, stopped (and any task's failure raised) on exit."""
    stop = asyncio.Event()
    store = HistoryStore.open(settings)
    store.ensure_schema()
    tasks = await _pipeline(settings, stop, store)
    try:
        yield store
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()
        store.close()


async def _stored_same(store) -> list[tuple]:
    """(tenant, text) of every stored query with id 'same', once both tenants' are there (30 s at most)."""
    for _ in range(30):  # the sink flushes every 0.3 s
        _, rows = await asyncio.to_thread(
            store.query, "SELECT tenant, text FROM queries FINAL WHERE query_id = 'same' ORDER BY tenant")
        if len(rows) >= 2:
            break
        await asyncio.sleep(1)
    return rows


async def _scenario(settings, tenant: dict, samples) -> tuple:
    """Both tenants use id "same"; A also asks "a-only"; B then reuses its own "same" for another text and sends
    a verdict on A's query. Returns what each saw, the dead letters, the cross reads and the stored rows."""
    s1, s2, s3 = samples
    topics = Topics.from_settings(settings)
    async with _running_pipeline(settings) as store:
        assert (await produce_lines(tenant[A], [_line("same", s1), _line("a-only", s3)], tenant=A))[0] == 2
        assert (await produce_lines(tenant[B], [_line("same", s2)], tenant=B))[0] == 1
        got_a, got_b = await _answers(tenant[A], A, 2), await _answers(tenant[B], B, 1)
        assert (await produce_lines(tenant[B], [_line("same", s3)], tenant=B))[0] == 1
        # B's verdict on A's query, on B's own topic (B may write nothing else).
        fb = json.dumps({"id": "a-only", "model": got_a[0]["model"] or "m", "quality": 0.0})
        assert await produce_feedback(tenant[B], [fb], tenant=B) == (1, [])
        letters = await _dead_letters(settings, lambda out: len(out) >= 2)
        await asyncio.sleep(2)  # what B's reuse might still (wrongly) deliver
        final_b = await _answers(tenant[B], B, 1, timeout=5)
        refused = await _read_as(tenant[A], topics.answers_for(B)), await _read_as(tenant[B], topics.answers_for(B))
        return got_a, got_b, final_b, letters, refused, await _stored_same(store)


@pytest.mark.timeout(180)
def test_tenants_are_isolated_end_to_end(make_settings, kafka_broker, capsys):
    # One partition: both tenants' "same" meet in one scorer partition, as they would on any shared key.
    settings = make_settings(sink_flush_seconds=0.3, topic_partitions=1)
    if settings.kafka_security == "none":
        pytest.skip("the tenant credentials need Kafka security")
    # A through `selfevolve tenants add`, which writes A's credential to a private secrets folder; B directly.
    assert _tenants(argparse.Namespace(tenant=A), settings) == 0
    folder = settings.home / "secrets" / "tenants" / A
    assert str(folder) in capsys.readouterr().out
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o600}
    tenant = {A: _tenant_settings(settings, folder),
              B: make_settings(kafka_username=tenant_user(B), kafka_password=add_tenant(settings, B),
                               topic_partitions=1)}
    assert tenant[A].kafka_username == tenant_user(A)
    s1, s2, s3 = list(load_dir(settings.replay_dir).samples)[:3]

    got_a, got_b, final_b, letters, refused, rows = asyncio.run(_scenario(settings, tenant, (s1, s2, s3)))
    assert sorted((a["tenant"], a["query_id"]) for a in got_a) == [(A, "a-only"), (A, "same")]
    assert [(a["tenant"], a["query_id"]) for a in got_b] == [(B, "same")]
    assert [a["query_id"] for a in final_b] == ["same"], "B's reused id was answered a second time"
    reasons = [d["reason"] for d in letters]
    assert any(f"duplicate query id same for tenant {B}" in r for r in reasons), reasons
    assert any(f"feedback for a query tenant {B} does not own" in r for r in reasons), reasons
    (a_read, a_code), (b_read, b_code) = refused
    assert (a_read, a_code) == (0, 29), "tenant A read tenant B's answers"  # 29: TOPIC_AUTHORIZATION_FAILED
    assert b_read >= 1 and b_code == 0, "the same reader with B's credentials reads them"
    assert rows == [(A, s1.prompt), (B, s2.prompt)], "ClickHouse must keep both tenants' query 'same'"
