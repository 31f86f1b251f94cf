"""Serve one inference request on its model's backend; failures become ok=False responses, never exceptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from selfevolve.models.catalogue import Catalogue
from selfevolve.errors import BackendError, ConfigError


async def serve_request(
    request: Mapping,
    catalogue: Catalogue,
    backends: Mapping[str, object],
    *,
    timeout_s: float,
    now_ms: int | None = None,
) -> dict:
    """Answer `request` (an InferenceRequest record) and return an InferenceResponse record.

    A failure or timeout is reported with ok=False and its reason; the scorer's arbiter then
    falls back to the next tier through the pipeline, so the fallback is recorded where it is
    decided. Failed calls cost nothing (providers do not bill errors).
    """
    model = request["model"]
    t0 = time.perf_counter()
    try:
        spec = catalogue.get(model)
        backend = backends.get(spec.backend)
        if backend is None:
            raise BackendError(f"this worker has no {spec.backend!r} backend")
        done = await asyncio.wait_for(
            backend.complete(spec, request["text"], query_id=request["query_id"],
                             metadata=dict(request.get("metadata") or {})),
            timeout_s,
        )
    except asyncio.TimeoutError:
        return _failed(request, now_ms, t0, f"{model}: timed out after {timeout_s:g}s")
    except (BackendError, ConfigError) as e:
        return _failed(request, now_ms, t0, f"{model}: {e}")
    return _response(request, now_ms, ok=True, answer=done.answer,
                     # -1 marks "no confidence from the backend"; the scorer uses calibrated history.
                     confidence=-1.0 if done.confidence is None else float(done.confidence),
                     latency_ms=done.latency_ms, prompt_tokens=done.prompt_tokens,
                     completion_tokens=done.completion_tokens, cost_usd=done.cost_usd, error=None)


def _failed(request: Mapping, now_ms: int | None, t0: float, error: str) -> dict:
    return _response(request, now_ms, ok=False, answer="", confidence=0.0,
                     latency_ms=(time.perf_counter() - t0) * 1000, prompt_tokens=0,
                     completion_tokens=0, cost_usd=0.0, error=error)


def _response(request: Mapping, now_ms: int | None, **fields) -> dict:
    return {
        "request_id": request["request_id"],
        "query_id": request["query_id"],
        "tenant": request["tenant"],
        "model": request["model"],
        "fallback_from": request.get("fallback_from"),
        "stage": int(request.get("stage", 0)),
        "ts_ms": now_ms if now_ms is not None else int(time.time() * 1000),
        **fields,
    }
