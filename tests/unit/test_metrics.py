"""Prometheus metrics: names follow the conventions, the instrumented helpers count, a process serves them."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from infra.ports import free_ports
from selfevolve.config import Settings
from selfevolve.flow.events import Out
from streams import metrics

OURS = [f for f in REGISTRY.collect() if f.name.startswith("selfevolve_")]
UNITS = ("_seconds", "_usd", "_ratio", "_bytes")


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metric_names_follow_prometheus_conventions():
    names = {f.name for f in OURS}
    assert {"selfevolve_queries", "selfevolve_answers", "selfevolve_dead_letters", "selfevolve_model_calls",
            "selfevolve_model_cost_usd", "selfevolve_stage_seconds", "selfevolve_consumer_lag",
            "selfevolve_evolution_events"} <= names
    for family in OURS:
        assert re.fullmatch(r"selfevolve_[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        if family.type == "counter":  # the exposition adds _total; the base name must not carry a unit twice
            assert not family.name.endswith("_total"), family.name
        if family.type == "histogram":
            assert family.name.endswith(UNITS), f"histogram {family.name} names no base unit"
        if "cost" in family.name:
            assert family.name.endswith("_usd"), family.name  # the currency is the unit


def test_every_label_is_snake_case_and_not_reserved():
    for family in OURS:
        for sample in family.samples:
            for label in sample.labels:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label) and not label.startswith("__"), (family.name, label)


def test_observe_out_counts_decisions_answers_feedback_and_evolution():
    before = (_value("selfevolve_queries_total"),
              _value("selfevolve_answers_total", strategy="cascade", model="m1"),
              _value("selfevolve_answer_cost_usd_total", strategy="cascade"),
              _value("selfevolve_evolution_events_total", kind="promote"),
              _value("selfevolve_evolution_events_total", kind="strategy"),
              _value("selfevolve_feedback_quality_ratio_count"))
    metrics.observe_out(Out("route_decision", {"strategy": "cascade"}, "k", "route-decisions"))
    metrics.observe_out(Out("answer", {"strategy": "cascade", "model": "m1", "cost_usd": 0.25}, "k", "answers"))
    metrics.observe_out(Out("model_event", {"kind": "promote"}, "m1", "model-events"))
    metrics.observe_out(Out("strategy", {"theta_high": 0.8}, None, "strategy"))
    metrics.observe_out(Out("history", {"event": "feedback", "quality": 0.9}, "k", "history"))
    metrics.observe_out(Out("history", {"event": "delivery"}, "k", "history"))  # a delivery is no verdict
    after = (_value("selfevolve_queries_total"),
             _value("selfevolve_answers_total", strategy="cascade", model="m1"),
             _value("selfevolve_answer_cost_usd_total", strategy="cascade"),
             _value("selfevolve_evolution_events_total", kind="promote"),
             _value("selfevolve_evolution_events_total", kind="strategy"),
             _value("selfevolve_feedback_quality_ratio_count"))
    assert [round(a - b, 9) for a, b in zip(after, before)] == [1, 1, 0.25, 1, 1, 1]


def test_a_malformed_record_is_not_counted_and_does_not_raise():
    metrics.observe_out(Out("answer", {"strategy": "x", "model": "m", "cost_usd": "not a number"}, None, "answers"))


def test_observe_response_counts_calls_by_outcome_with_cost_and_latency():
    ok = {"model": "m2", "ok": True, "latency_ms": 120.0, "cost_usd": 0.01, "prompt_tokens": 7,
          "completion_tokens": 3, "error": None}
    timed_out = {**ok, "ok": False, "cost_usd": 0.0, "error": "m2: timed out after 30s"}
    failed = {**ok, "ok": False, "cost_usd": 0.0, "error": "m2: HTTP 500"}
    before = [_value("selfevolve_model_calls_total", model="m2", outcome=o) for o in ("ok", "timeout", "error")]
    cost = _value("selfevolve_model_cost_usd_total", model="m2")
    for r in (ok, timed_out, failed):
        metrics.observe_response(r)
    after = [_value("selfevolve_model_calls_total", model="m2", outcome=o) for o in ("ok", "timeout", "error")]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    assert _value("selfevolve_model_cost_usd_total", model="m2") - cost == pytest.approx(0.01)
    assert _value("selfevolve_model_tokens_total", model="m2", kind="completion") >= 3


def test_runtime_send_out_and_send_dead_letter_count():
    from streams.runtime import Runtime

    rt = Runtime.build(Settings(topic_prefix="m."))

    async def sent(topic, kind, record, key):
        return None

    rt.send = sent

    class Msg:
        topic, partition, offset, key, value = "m.queries", 0, 5, b"k", b"\x00bad"

    answers = _value("selfevolve_answers_total", strategy="direct", model="m3")
    dead = _value("selfevolve_dead_letters_total", reason="ValueError")
    record = {"strategy": "direct", "model": "m3", "cost_usd": 0.0}
    asyncio.run(rt.send_out(Out("answer", record, "k", "answers")))
    asyncio.run(rt.send_dead_letter(Msg(), ValueError("bad bytes")))
    assert _value("selfevolve_answers_total", strategy="direct", model="m3") == answers + 1
    assert _value("selfevolve_dead_letters_total", reason="ValueError") == dead + 1


def test_lag_sums_each_topics_partitions_and_ignores_uncommitted():
    from aiokafka import TopicPartition as TP

    committed = {TP("a", 0): 5, TP("a", 1): 10, TP("b", 0): -1, TP("c", 0): 3}
    ends = {TP("a", 0): 8, TP("a", 1): 10, TP("b", 0): 4, TP("c", 0): 2}
    assert metrics.lag_by_topic(committed, ends) == {"a": 3, "c": 0}


def test_each_role_and_worker_gets_its_own_port():
    s = Settings()
    ports = [metrics.metrics_port(s, "serve", i) for i in range(8)] + [
        metrics.metrics_port(s, "model", i) for i in range(8)] + [
        metrics.metrics_port(s, "local", i) for i in range(4)] + [
        metrics.metrics_port(s, r) for r in ("history", "trainer")]
    assert len(set(ports)) == len(ports)
    assert metrics.worker_index("3") == ("model", 3) and metrics.worker_index("local-1") == ("local", 1)


def test_a_process_serves_its_metrics_and_a_taken_port_does_not_stop_it():
    port, = free_ports(1)
    s = Settings(metrics_serve_port=port - 2)
    assert metrics.serve_metrics(s, "serve", 2) == port
    assert metrics.serve_metrics(s, "serve", 2) == port  # once per process: a second call reuses it
    metrics.observe_dead_letter(KeyError("x"))
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["selfevolve_dead_letters"].type == "counter"
    assert any(s.labels == {"reason": "KeyError"} and s.value >= 1 for s in families["selfevolve_dead_letters"].samples)
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert metrics.serve_metrics(Settings(metrics_history_port=busy), "history") is None
    assert metrics.serve_metrics(Settings(metrics_enabled=False), "history") is None
