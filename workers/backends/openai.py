"""OpenAI-compatible chat-completions backend over httpx, with timeout, retries and token-priced cost."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import httpx

from workers.backends.base import Completion, estimate_tokens
from selfevolve.models.catalogue import ModelSpec, estimate_cost
from selfevolve.config import Settings
from selfevolve.errors import BackendError

# Worth another try: the server is busy or broken now, not the request.
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _excerpt(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def confidence_from_logprobs(choice: dict[str, Any]) -> float | None:
    """Mean probability of the generated tokens, from choice.logprobs.content[].logprob; None if absent."""
    content = (choice.get("logprobs") or {}).get("content") or []
    values = [t["logprob"] for t in content if isinstance(t, dict) and isinstance(t.get("logprob"), (int, float))]
    if not values:
        return None
    return float(sum(math.exp(min(0.0, v)) for v in values) / len(values))


class OpenAIBackend:
    """Calls {base_url}/chat/completions; spec.options may set base_url, model, max_tokens, temperature, logprobs."""

    def __init__(self, settings: Settings, *, client: httpx.AsyncClient | None = None,
                 backoff_s: float | None = None) -> None:
        self._settings = settings
        self._client = client
        self._own_client = client is None
        self._backoff_s = settings.backend_backoff_s if backoff_s is None else backoff_s

    def _http(self) -> httpx.AsyncClient:
        # Built on first use so constructing the backend needs no running event loop.
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self._settings.backend_timeout_s))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None

    def _request(self, spec: ModelSpec, prompt: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        opts = spec.options
        url = str(opts.get("base_url", self._settings.openai_base_url)).rstrip("/") + "/chat/completions"
        body: dict[str, Any] = {
            "model": str(opts.get("model", spec.name)),
            "messages": [{"role": "user", "content": prompt}],
            "temperature": float(opts.get("temperature", 0.0)),
        }
        if "max_tokens" in opts:
            body["max_tokens"] = int(opts["max_tokens"])
        if opts.get("logprobs", True):
            body["logprobs"] = True
        headers = {"Content-Type": "application/json"}
        if self._settings.openai_api_key is not None:  # a SecretStr: revealed only into this header
            headers["Authorization"] = f"Bearer {self._settings.openai_api_key.get_secret_value()}"
        return url, body, headers

    async def complete(
        self, spec: ModelSpec, prompt: str, *, query_id: str = "", metadata: dict[str, str] | None = None
    ) -> Completion:
        url, body, headers = self._request(spec, prompt)
        timeout = self._settings.backend_timeout_s
        attempts = 1 + max(0, self._settings.backend_retries)
        start = time.perf_counter()
        last = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                resp = await self._http().post(url, json=body, headers=headers, timeout=timeout)
            except httpx.TimeoutException as e:
                last = f"timed out after {timeout:g}s ({type(e).__name__})"
                continue
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code in _RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_excerpt(resp.text)}"
                continue
            if resp.status_code >= 400:
                raise BackendError(
                    f"{spec.name}: HTTP {resp.status_code} from {url} (query {query_id!r}): {_excerpt(resp.text)}"
                )
            return self._parse(spec, prompt, url, resp, (time.perf_counter() - start) * 1000.0)
        raise BackendError(f"{spec.name}: {url} failed after {attempts} attempt(s) (query {query_id!r}): {last}")

    def _parse(self, spec: ModelSpec, prompt: str, url: str, resp: httpx.Response, latency_ms: float) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            answer = choice["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{spec.name}: malformed reply from {url}: {_excerpt(resp.text)}") from e
        usage = data.get("usage") or {}
        # Servers that omit usage still get billed on an estimate rather than for free.
        prompt_tokens = int(usage.get("prompt_tokens") or estimate_tokens(prompt))
        completion_tokens = int(usage.get("completion_tokens") or estimate_tokens(answer))
        return Completion(
            answer=answer,
            confidence=confidence_from_logprobs(choice),
            latency_ms=latency_ms,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=estimate_cost(spec, prompt_tokens, completion_tokens),
        )
