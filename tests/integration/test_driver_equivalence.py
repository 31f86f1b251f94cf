"""The in-memory driver and the Kafka pipeline run the same folds: one short log, the same decisions, winners
and evolution events.

The Kafka side runs one query at a time (its answer, then its gold verdicts, then whatever evolution they
cause), waiting between steps until every consumer group has read everything (streams/settle.py): that is
the order the driver delivers events in with a window of one. Evolution is made to happen within a short log
(small windows and a low promotion bar, a gap bar every domain fails, a meta-learner round every few answers).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from infra.ports import free_ports
from selfevolve.data.routerbench import load_dir
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.flow.workload import from_samples, plan
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.embed import Embedder
from selfevolve.wire.codec import Codec
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics
from streams.demo import wait_ready
from streams.kafka_io import group_id, producer, tail_consumer
from streams.settle import Settler
from streams.stack import Stack
from workers.backends.registry import default_replay_dir
from workers.model_worker import GROUP as MODEL_GROUP

QUERIES = 16
EVOLVING = dict(promote_min_n=3, promote_min_winrate=0.4, promote_min_confidence=0.3, window_size=4,
                gap_confidence=0.95, metalearn_every=3, metalearn_window=6, max_models_per_domain=12)
EVOLUTION = ("model_event", "gap", "spawn", "strategy")


@pytest.fixture
def eq_settings(make_settings):
    web, history_web, sql_port = free_ports(3)
    return make_settings(web_port=web, history_web_port=history_web, sql_port=sql_port, sink_flush_seconds=0.2,
                         **EVOLVING)


def _workload(settings):
    data = load_dir(default_replay_dir(settings))  # what the model worker answers from
    demo = load_dir(settings.replay_dir)
    return from_samples("eq", plan(demo, seed=3, warmup=QUERIES // 2, limit=QUERIES // 2), None), data


def _expected_groups(settings) -> dict[str, list[str]]:
    """Which consumer group reads which topic: the serve role's tasks, the model worker, and the history
    role's agents and sink (the meta-learner's input)."""
    t = Topics.from_settings(settings)
    return {
        group_id(settings, "router"): [t.queries],
        group_id(settings, "scorer"): [t.route_decisions, t.inference_responses],
        MODEL_GROUP: [t.requests_for("replay")],
        group_id(settings, "feedback"): [t.feedback],
        group_id(settings, "history"): [t.scores, t.model_events, t.strategy],
        group_id(settings, "sink"): [t.answers, t.feedback, t.strategy],
    }


async def _through_kafka(settings, work) -> dict[str, list[dict]]:
    codec, t = Codec.from_dir(), Topics.from_settings(settings)
    answers = await tail_consumer(settings, t.answers, from_beginning=True)
    prod = producer(settings)
    await prod.start()
    try:
        # The serve worker's history replica and evolution followers read without a group: asked directly.
        replica = f"http://127.0.0.1:{settings.web_port}/replica"
        async with Settler(settings, _expected_groups(settings), replicas=[replica]) as settler:
            for q in work.queries:
                key = query_key(q["tenant"], q["query_id"]).encode()
                await prod.send_and_wait(t.queries, key=key, value=codec.encode("query", q))
                answer = await _answer_of(answers, codec, q["query_id"])
                for fb in work.feedback(answer):
                    await prod.send_and_wait(t.feedback, key=key, value=codec.encode("feedback", fb))
                await settler.settle(timeout_s=90)
    finally:
        await prod.stop()
        await answers.stop()
    topics = {"route_decision": t.route_decisions, "answer": t.answers, "model_event": t.model_events,
              "gap": t.gaps, "spawn": t.spawns, "strategy": t.strategy}
    return {kind: await _read_all(settings, codec, topic, kind) for kind, topic in topics.items()}


async def _answer_of(consumer, codec, query_id: str, timeout_s: float = 90) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        for msgs in (await consumer.getmany(timeout_ms=200)).values():
            for m in msgs:
                a = codec.decode("answer", m.value)
                if a["query_id"] == query_id:
                    return a
    raise AssertionError(f"no answer to {query_id} within {timeout_s} s")


async def _read_all(settings, codec, topic: str, kind: str) -> list[dict]:
    """Every committed record of a topic, in (partition, offset) order per partition."""
    consumer = await tail_consumer(settings, topic, from_beginning=True)
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        out: list[tuple[int, int, dict]] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out += [(m.partition, m.offset, codec.decode(kind, m.value)) for m in msgs]
        return [r for _, _, r in sorted(out, key=lambda x: (x[0], x[1]))]
    finally:
        await consumer.stop()


def _decisions(records: list[dict]) -> dict[str, tuple]:
    # Not compared: source (a Kafka position), decision_ms (a measured latency), ts_ms (the same by design,
    # but the point is what was decided).
    return {r["query_id"]: (r["strategy"], tuple(r["models"]), r["domain"], json.loads(r["plan"])) for r in records}


def _winners(records: list[dict]) -> dict[str, tuple]:
    return {r["query_id"]: (r["model"], tuple(r["models_called"]), round(r["cost_usd"], 12), r["strategy"],
                            r["domain"]) for r in records}


def _evolution(kind: str, records: list[dict]) -> list[tuple]:
    """What evolution events decided, without their times, as a multiset: a topic's partitions have no order
    between them."""
    fields = {"model_event": ("kind", "model", "domain", "old_role", "new_role"),
              "gap": ("domain", "kind", "traffic"), "spawn": ("domain",), "strategy": ("theta_high", "theta_low")}
    return sorted(tuple(r.get(f) for f in fields[kind]) for r in records)


def test_driver_and_kafka_pipeline_decide_the_same(eq_settings):
    work, data = _workload(eq_settings)
    catalogue = Catalogue.load(eq_settings.catalogue)
    flow = dataflow.build(eq_settings, catalogue, Embedder(eq_settings))
    mem = driver.replay(flow.driver(recorded(data, catalogue)), work.queries, work.feedback, window=1)

    stack = Stack(eq_settings)
    stack.up(with_broker=False)
    try:
        wait_ready(eq_settings, timeout=240)
        kafka = asyncio.run(_through_kafka(eq_settings, work))
    finally:
        stack.down(with_broker=False)

    assert len(kafka["answer"]) == QUERIES == len(mem.of("answer"))
    assert _decisions(kafka["route_decision"]) == _decisions(mem.of("route_decision"))
    assert _winners(kafka["answer"]) == _winners(mem.of("answer"))
    happened = 0
    for kind in EVOLUTION:
        assert _evolution(kind, kafka[kind]) == _evolution(kind, mem.of(kind)), kind
        happened += len(mem.of(kind))
    assert happened > 0, "the log was meant to make evolution happen"
