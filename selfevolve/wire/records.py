"""Core objects <-> event records: the one place that knows both the dataclasses and the Avro fields."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import numpy as np

from selfevolve.scoring import arbiter
from selfevolve.errors import ValidationError
from selfevolve.routing import Decision


# A query's embedding on the wire: float32 little-endian, exact, so a history rebuilt from decisions (the
# Kafka pipeline) and one fed in memory (the in-memory driver) hold the same vectors and route alike.
VECTOR_DTYPE = np.dtype("<f4")


def vector_bytes(vector) -> bytes | None:
    """The wire form of an embedding (None for None)."""
    return None if vector is None else np.asarray(vector, dtype=VECTOR_DTYPE).ravel().tobytes()


def vector_of(record: Mapping) -> np.ndarray | None:
    """The query embedding a decision record carries (float32), or None when it has none (written before v4);
    raises ValidationError for bytes that are not a finite float32 vector."""
    raw = record.get("vector")
    if not raw:  # None, or b"" from a writer that had no vector either
        return None
    if len(raw) % VECTOR_DTYPE.itemsize:
        raise ValidationError(f"route decision vector is {len(raw)} bytes, not a whole number of float32s")
    vec = np.frombuffer(bytes(raw), dtype=VECTOR_DTYPE).astype(np.float32)
    if not np.isfinite(vec).all():
        raise ValidationError("route decision vector holds a NaN or an infinity")
    return vec


def decision_record(d: Decision, metadata: Mapping[str, str], decision_ms: float, ts_ms: int,
                    domain: int = -1, source: str = "", vector=None) -> dict:
    """A RouteDecision record; `plan` carries the whole Decision so the scorer can rebuild it, `source` where
    its query was read, which tells a re-delivered decision from another query reusing the (tenant, id), and
    `vector` the query's embedding, so whoever delivers its answer adds it to the history without embedding
    it again."""
    return {
        "query_id": d.query_id, "tenant": d.tenant, "strategy": d.strategy,
        "similarity": float(d.similarity), "models": list(d.models), "domain": domain,
        "theta_high": float(d.theta_high), "theta_low": float(d.theta_low),
        "decision_ms": float(decision_ms), "metadata": dict(metadata),
        # Decision's fields are plain values, tuples and flat dicts: no deep copy (asdict) is needed.
        "plan": json.dumps({f.name: getattr(d, f.name) for f in dataclasses.fields(d)}, default=float),
        "source": source, "vector": vector_bytes(vector), "ts_ms": ts_ms,
    }


def source_of(topic: str, partition: int, offset: int) -> str:
    """A record's identity as `decision_record` stores it: its position in the log."""
    return f"{topic}:{partition}:{offset}"


def decision_from_record(record: Mapping) -> Decision:
    """The Decision a record's plan holds; a plan naming another query than its record is refused: its calls
    would go out under the plan's id while the scorer logs the record's, so neither would ever be answered."""
    plan = json.loads(record["plan"])
    if not isinstance(plan, dict):
        raise ValidationError(f"route decision plan must be a JSON object, got {type(plan).__name__}")
    for field in ("query_id", "tenant"):
        if field in record and plan.get(field) != record[field]:
            raise ValidationError(f"route decision plan names {field} {str(plan.get(field))[:100]!r}, "
                                  f"its record {str(record[field])[:100]!r}")
    plan["models"] = tuple(plan["models"])
    plan["escalation"] = tuple(tuple(stage) for stage in plan["escalation"])
    return Decision(**plan)


def request_record(call: arbiter.Call, d: Decision, metadata: Mapping[str, str], ts_ms: int) -> dict:
    """The request id is deterministic, so a re-sent call after a restart is recognisably the same; it names
    the tenant, as two tenants' queries may share an id."""
    return {
        "request_id": arbiter.request_id(d.tenant, call), "query_id": call.query_id,
        "tenant": d.tenant, "model": call.model, "text": d.text, "strategy": d.strategy,
        "stage": call.stage, "attempt": 0, "fallback_from": call.fallback_from,
        "metadata": dict(metadata), "ts_ms": ts_ms,
    }


def response_from_record(record: Mapping) -> arbiter.Response:
    return arbiter.Response(query_id=record["query_id"], model=record["model"], answer=record["answer"],
                            ok=bool(record["ok"]), cost=float(record["cost_usd"]),
                            stage=int(record["stage"]), error=record.get("error") or "",
                            request_id=record["request_id"])


def score_records(v: arbiter.Verdict, domain: int, ts_ms: int, tenant: str = "default") -> list[dict]:
    return [{"query_id": v.query_id, "tenant": tenant, "model": m, "relevance": s.relevance, "correctness": s.correctness,
             "completeness": s.completeness, "clarity": s.clarity, "composite": s.composite,
             "confidence": s.confidence, "winner": m == v.winner, "domain": domain,
             "cost_usd": float(v.model_costs.get(m, 0.0)), "contested": len(v.scores) >= 2, "ts_ms": ts_ms}
            for m, s in v.scores.items()]


def answer_record(v: arbiter.Verdict, tenant: str, domain: int, latency_ms: float, ts_ms: int) -> dict:
    composite = v.scores[v.winner].composite if v.winner in v.scores else 0.0
    return {"query_id": v.query_id, "tenant": tenant, "model": v.winner or "", "answer": v.answer,
            "composite": composite, "cost_usd": float(v.cost), "strategy": v.strategy,
            "models_called": list(v.models_called), "fallbacks": list(v.fallbacks), "domain": domain,
            "latency_ms": float(latency_ms), "ts_ms": ts_ms}


def history_delivery(v: arbiter.Verdict, tenant: str, text: str, vector, domain: int, ts_ms: int,
                     source: str, cached_from: str = "") -> dict:
    """The history topic's record of a delivered answer: what every serve worker's routing history, domains
    and answer cache learn from it. Every called model is listed, failures at their real cost (often 0):
    they too were paid to try."""
    return {"event": "delivery", "query_id": v.query_id, "tenant": tenant, "ts_ms": int(ts_ms), "source": source,
            "text": text, "vector": vector_bytes(vector), "winner": v.winner, "strategy": v.strategy,
            "costs": {m: float(v.model_costs.get(m, 0.0)) for m in v.models_called}, "domain": int(domain),
            "answer": v.answer, "cached_from": cached_from, "model": "", "quality": 0.0}


def history_feedback(fb: Mapping) -> dict:
    """The history topic's record of an accepted verdict (a feedback record the feedback host let through)."""
    return {"event": "feedback", "query_id": fb["query_id"], "tenant": fb["tenant"], "ts_ms": int(fb["ts_ms"]),
            "source": fb.get("source") or "", "text": "", "vector": None, "winner": None, "strategy": "",
            "costs": {}, "domain": -1, "answer": "", "cached_from": "", "model": fb["model"],
            "quality": float(fb["quality"])}
