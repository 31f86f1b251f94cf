"""Prometheus metrics of every process, defined once here; each process serves them on its own port."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from selfevolve.config import Settings

log = logging.getLogger("selfevolve.metrics")

# Defining a metric registers it in prometheus_client's process-wide registry: no I/O, nothing served yet.
# Labels take bounded values only (models of the catalogue, strategies, event kinds, exception class names).
QUERIES = Counter("selfevolve_queries_total", "Queries routed (one route decision each).")
ROUTE_DECISIONS = Counter("selfevolve_route_decisions_total", "Route decisions by strategy.", ["strategy"])
ANSWERS = Counter("selfevolve_answers_total", "Answers delivered, by routing strategy and answering model.",
                  ["strategy", "model"])
ANSWER_COST = Counter("selfevolve_answer_cost_usd_total",
                      "USD paid for the delivered answers (every model called for them), by strategy.", ["strategy"])
FEEDBACK_QUALITY = Histogram("selfevolve_feedback_quality_ratio", "Accepted feedback verdicts (quality, 0..1).",
                             buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
DEAD_LETTERS = Counter("selfevolve_dead_letters_total",
                       "Records dead-lettered, by reason (the error's class; the record keeps its text).", ["reason"])
MODEL_CALLS = Counter("selfevolve_model_calls_total", "Model calls by model and outcome (ok, error, timeout).",
                      ["model", "outcome"])
MODEL_COST = Counter("selfevolve_model_cost_usd_total", "USD paid for model calls, by model.", ["model"])
MODEL_TOKENS = Counter("selfevolve_model_tokens_total", "Tokens of model calls, by model and kind (prompt, completion).",
                       ["model", "kind"])
MODEL_CALL_SECONDS = Histogram("selfevolve_model_call_seconds", "Latency of one model call, by model.", ["model"],
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
STAGE_SECONDS = Histogram("selfevolve_stage_seconds", "Handling time of one consumed batch, by stage.", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STAGE_RECORDS = Counter("selfevolve_stage_records_total", "Records consumed, by stage.", ["stage"])
CONSUMER_LAG = Gauge("selfevolve_consumer_lag", "Records a consumer group has not committed yet, by topic.",
                     ["group", "topic"])
EVOLUTION_EVENTS = Counter("selfevolve_evolution_events_total",
                           "Evolution events: model events by their kind (promote, demote, spawn, version, ...), "
                           "gaps, spawns and strategy changes.", ["kind"])
# The gateway's own (streams/gateway*.py counts them; defined here so every name lives in one place).
GATEWAY_REQUESTS = Counter("selfevolve_gateway_requests_total", "Gateway HTTP requests by route and status code.",
                           ["route", "status"])
GATEWAY_SECONDS = Histogram("selfevolve_gateway_request_seconds", "Gateway request latency, by route.", ["route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

_served: dict[int, object] = {}  # port -> server: one per port per process, whatever calls serve_metrics


def metrics_port(settings: Settings, role: str, index: int = 0) -> int:
    """The port a process of `role` serves its metrics on (index: its serve, model or local worker number)."""
    base = {"serve": settings.metrics_serve_port, "history": settings.metrics_history_port,
            "model": settings.metrics_model_port, "local": settings.metrics_local_port,
            "trainer": settings.metrics_trainer_port}[role]
    return base + index


def worker_index(worker_id: str) -> tuple[str, int]:
    """("model", i) for model worker "i", ("local", i) for "local-i" (the stack's ids); any other id: index 0."""
    m = re.fullmatch(r"(local-)?(\d+)", worker_id)
    return ("local" if m and m.group(1) else "model"), (int(m.group(2)) if m else 0)


def serve_metrics(settings: Settings, role: str, index: int = 0) -> int | None:
    """Serve /metrics of this process on its role's port (a thread); the port, or None when metrics are off
    or the port is taken: a worker must run on without its metrics rather than not at all."""
    if not settings.metrics_enabled:
        return None
    port = metrics_port(settings, role, index)
    if port in _served:
        return port
    try:
        _served[port], _ = start_http_server(port, addr=settings.metrics_host)
    except OSError as e:
        log.warning("cannot serve metrics on %s:%s (%s): this process runs without them", settings.metrics_host,
                    port, e)
        return None
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, port)
    return port


def observe_out(out) -> None:
    """Count one output a fold sends (streams/runtime.py send_out): decisions, answers, feedback, evolution."""
    kind, r = out.kind, out.record
    try:
        if kind == "route_decision":
            QUERIES.inc()
            ROUTE_DECISIONS.labels(str(r.get("strategy", ""))).inc()
        elif kind == "answer":
            strategy = str(r.get("strategy", ""))
            ANSWERS.labels(strategy, str(r.get("model", ""))).inc()
            ANSWER_COST.labels(strategy).inc(max(0.0, float(r.get("cost_usd") or 0.0)))
        elif kind == "model_event":
            EVOLUTION_EVENTS.labels(str(r.get("kind", ""))).inc()
        elif kind in ("gap", "spawn", "strategy"):
            EVOLUTION_EVENTS.labels(kind).inc()
        elif kind == "history" and r.get("event") == "feedback":
            FEEDBACK_QUALITY.observe(float(r.get("quality") or 0.0))
    except (TypeError, ValueError):  # a malformed record is the codec's to refuse, not a reason to stop a send
        log.debug("not counted: %s output %r", kind, r)


def observe_dead_letter(error: BaseException) -> None:
    DEAD_LETTERS.labels(type(error).__name__).inc()


def observe_batch(stage: str, seconds: float, records: int) -> None:
    """One consumed batch of a stage (streams/kafka_io.py transactional_loop, the model worker)."""
    STAGE_SECONDS.labels(stage).observe(seconds)
    STAGE_RECORDS.labels(stage).inc(records)


def observe_response(response: dict) -> None:
    """One model call's inference_response record (workers/model_worker.py)."""
    model = str(response.get("model", ""))
    error = str(response.get("error") or "")
    outcome = "ok" if response.get("ok") else ("timeout" if "timed out" in error else "error")
    MODEL_CALLS.labels(model, outcome).inc()
    MODEL_CALL_SECONDS.labels(model).observe(max(0.0, float(response.get("latency_ms") or 0.0)) / 1000.0)
    MODEL_COST.labels(model).inc(max(0.0, float(response.get("cost_usd") or 0.0)))
    MODEL_TOKENS.labels(model, "prompt").inc(max(0, int(response.get("prompt_tokens") or 0)))
    MODEL_TOKENS.labels(model, "completion").inc(max(0, int(response.get("completion_tokens") or 0)))


# --- Consumer lag: the history role compares every group's committed offsets with the topics' ends. ---


def lag_by_topic(committed: dict, ends: dict) -> dict[str, int]:
    """Per topic, the records past each partition's committed offset: sum of max(0, end - committed)."""
    out: dict[str, int] = defaultdict(int)
    for tp, offset in committed.items():
        if tp in ends and offset is not None and offset >= 0:
            out[tp.topic] += max(0, ends[tp] - offset)
    return dict(out)


async def update_lag(settings: Settings) -> dict[tuple[str, str], int]:
    """Set selfevolve_consumer_lag for every consumer group that reads this stack's topics; returns it."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_io import admin_client, client_options

    lags: dict[tuple[str, str], int] = {}
    async with admin_client(settings) as admin:
        groups = [g[0] if isinstance(g, tuple) else g for g in await admin.list_consumer_groups()]
        committed = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items()
                                if tp.topic.startswith(settings.topic_prefix)}
    tps = {tp for offsets in committed.values() for tp in offsets}
    if not tps:
        return lags
    # read_committed: a transactional topic's end is its last stable offset, what a reader can reach.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", **client_options(settings))
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(tps))
    finally:
        await consumer.stop()
    for group, offsets in committed.items():
        for topic, lag in lag_by_topic(offsets, ends).items():
            CONSUMER_LAG.labels(group, topic).set(lag)
            lags[(group, topic)] = lag
    return lags


async def poll_lag(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """update_lag every metrics_lag_interval_s until cancelled; a failed poll is logged, the next one retried."""
    while stop is None or not stop.is_set():
        t0 = time.perf_counter()
        try:
            await update_lag(settings)
        except Exception as e:  # noqa: BLE001 - lag is advisory: a broker hiccup must not stop the worker
            log.warning("consumer lag poll failed: %s", e)
        await asyncio.sleep(max(0.0, settings.metrics_lag_interval_s - (time.perf_counter() - t0)))


def register(app, rt) -> None:
    """A stream worker role's metrics (streams/app.py ROLES): serve /metrics once the worker starts; the
    history role also polls consumer lag."""
    role = "serve" if rt.owns_history else "history"

    @app.task
    async def metrics_server() -> None:
        serve_metrics(rt.settings, role, rt.settings.serve_worker if role == "serve" else 0)
        if role == "history" and rt.settings.metrics_enabled:
            await poll_lag(rt.settings)


def asgi_app():
    """The metrics of this process as an ASGI app, for a process that already serves HTTP (the gateway mounts
    it at /metrics instead of opening a port of its own)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app()
