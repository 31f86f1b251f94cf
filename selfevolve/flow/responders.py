"""Pure responders for the in-memory driver: inference requests answered from recordings, never a model.

Two sources of recordings, one rule set, the one the stack's replay model worker applies
(workers/backends/recorded.py ReplayBackend behind selfevolve/models/serving.py serve_request):

- `recorded(dataset, catalogue)`: RouterBench-format data. The query's metadata `sample_id` names its row
  (else the exact prompt text does); the column is the spec's `options["replay_model"]`, else its name. No
  row, no column, or an empty recorded answer: a failed call (ok=False), which costs nothing (providers do
  not bill errors) and which the arbiter answers with a fallback, as in the stack.
- `logged(responses)`: the inference responses of an exported run. A call the original run never made
  (another setting routed elsewhere) has no recording: a failed call whose error says NEVER_CALLED.

Responses are stamped with the request's ts_ms (event time) and latency 0, so a replay is deterministic;
token counts are the ~4-characters-per-token estimate the replay backend reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from selfevolve.data.routerbench import Dataset, Sample
from selfevolve.errors import ConfigError
from selfevolve.models.catalogue import Catalogue


NEVER_CALLED = "no recorded response: the recorded run never called this model for this query"


def estimate_tokens(text: str) -> int:
    """Rough token count when no tokenizer is at hand: about 4 characters per token (OpenAI's rule); the backends use it too."""
    return (len(text) + 3) // 4


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def response(request: Mapping, *, answer: str = "", cost_usd: float = 0.0, error: str | None = None,
             confidence: float = -1.0) -> dict:
    """The inference_response record of `request`: ok with `answer` and its cost, or failed with `error`."""
    ok = error is None
    return {
        "request_id": request["request_id"], "query_id": request["query_id"], "tenant": request["tenant"],
        "model": request["model"], "fallback_from": request.get("fallback_from"),
        "stage": int(request.get("stage", 0)), "ts_ms": int(request["ts_ms"]), "ok": ok,
        "answer": answer if ok else "", "confidence": confidence if ok else 0.0, "latency_ms": 0.0,
        "prompt_tokens": estimate_tokens(request["text"]) if ok else 0,
        "completion_tokens": estimate_tokens(answer) if ok else 0,
        "cost_usd": float(cost_usd) if ok else 0.0, "error": error,
    }


@dataclass
class Recorded:
    """request -> response from a RouterBench-format dataset (gold is not reachable from here)."""

    dataset: Dataset
    catalogue: Catalogue
    _by_prompt: dict[str, Sample] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for s in self.dataset.samples:
            # The first sample of a repeated prompt wins, so a prompt always replays the same recording.
            self._by_prompt.setdefault(prompt_key(s.prompt), s)

    def __call__(self, request: Mapping) -> dict:
        model = request["model"]
        try:
            spec = self.catalogue.get(model)
        except ConfigError as e:
            return response(request, error=f"{model}: {e}")
        column = str(spec.options.get("replay_model", spec.name))
        sid = (request.get("metadata") or {}).get("sample_id")
        sample = self.dataset.get(sid) if sid is not None else self._by_prompt.get(prompt_key(request["text"]))
        if sample is None:
            return response(request, error=f"{model}: replay: no recording of query {request['query_id']!r}")
        answer = sample.responses.get(column)
        if answer is None or column not in sample.costs:
            return response(request, error=f"{model}: replay: model {column!r} has no recording for query "
                                           f"{request['query_id']!r}")
        if not answer.strip():
            return response(request, error=f"{model}: replay: model {column!r} recorded an empty answer for "
                                           f"query {request['query_id']!r}")
        return response(request, answer=answer, cost_usd=sample.costs[column])


def recorded(dataset: Dataset, catalogue: Catalogue) -> Recorded:
    return Recorded(dataset, catalogue)


@dataclass
class Logged:
    """request -> the response an exported run recorded for (tenant, query id, model); failed if none."""

    responses: dict[tuple[str, str, str], dict]

    def __call__(self, request: Mapping) -> dict:
        got = self.responses.get((request["tenant"], request["query_id"], request["model"]))
        if got is None:
            return response(request, error=f"{request['model']}: {NEVER_CALLED}")
        if not got.get("ok"):
            return response(request, error=f"{request['model']}: failed in the recorded run too: {got.get('error')}")
        return response(request, answer=got["answer"], cost_usd=got["cost_usd"],
                        confidence=float(got.get("confidence", -1.0)))


def logged(records: Iterable[Mapping]) -> Logged:
    """A responder over exported inference_response records; the first ok answer per call wins."""
    table: dict[tuple[str, str, str], dict] = {}
    for r in records:
        k = (r.get("tenant") or "default", r["query_id"], r["model"])
        if k not in table or (r.get("ok") and not table[k].get("ok")):
            table[k] = dict(r)
    return Logged(table)
