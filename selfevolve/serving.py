"""Serve one inference request through the backends, falling back up the tiers when a backend fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from selfevolve.catalogue import Catalogue
from selfevolve.errors import BackendError
from selfevolve.fallback import fallback_chain


async def serve_request(
    request: Mapping,
    catalogue: Catalogue,
    backends: Mapping[str, object],
    *,
    timeout_s: float,
    now_ms: int | None = None,
) -> dict:
    """Answer `request` (an InferenceRequest record) and return an InferenceResponse record.

    A failure or timeout moves on to the next tier; the response names the model that really
    answered and, in `fallback_from`, the one that was asked. Failed calls cost nothing (providers
    do not bill errors), so only the answering call's cost is recorded.
    """
    asked = request["model"]
    errors: list[str] = []
    for model in fallback_chain(catalogue, asked):
        spec = catalogue.get(model)
        backend = backends.get(spec.backend)
        if backend is None:
            errors.append(f"{model}: no backend {spec.backend!r} in this worker")
            continue
        try:
            done = await asyncio.wait_for(
                backend.complete(spec, request["text"], query_id=request["query_id"],
                                 metadata=dict(request.get("metadata") or {})),
                timeout_s,
            )
        except asyncio.TimeoutError:
            errors.append(f"{model}: timed out after {timeout_s:g}s")
            continue
        except BackendError as e:
            errors.append(f"{model}: {e}")
            continue
        return _response(request, model, now_ms, ok=True, answer=done.answer,
                         confidence=done.confidence, latency_ms=done.latency_ms,
                         prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                         cost_usd=done.cost_usd, error="; ".join(errors) or None,
                         fallback_from=asked if model != asked else None)
    return _response(request, asked, now_ms, ok=False, answer="", confidence=0.0, latency_ms=0.0,
                     prompt_tokens=0, completion_tokens=0, cost_usd=0.0,
                     error="; ".join(errors) or "no model to call", fallback_from=None)


def _response(request: Mapping, model: str, now_ms: int | None, **fields) -> dict:
    conf = fields.pop("confidence")
    return {
        "request_id": request["request_id"],
        "query_id": request["query_id"],
        "tenant": request["tenant"],
        "model": model,
        # -1 marks "the backend gave no confidence"; the scorer then uses calibrated history.
        "confidence": -1.0 if conf is None else float(conf),
        "stage": int(request.get("stage", 0)),
        "ts_ms": now_ms if now_ms is not None else int(time.time() * 1000),
        **fields,
    }
