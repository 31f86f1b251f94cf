"""Core objects <-> event records: the one place that knows both the dataclasses and the Avro fields."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from selfevolve import arbiter
from selfevolve.routing import Decision


def decision_record(d: Decision, metadata: Mapping[str, str], decision_ms: float, ts_ms: int,
                    domain: int = -1) -> dict:
    """A RouteDecision record; `plan` carries the whole Decision so the scorer can rebuild it."""
    return {
        "query_id": d.query_id, "tenant": d.tenant, "strategy": d.strategy,
        "similarity": float(d.similarity), "models": list(d.models), "domain": domain,
        "theta_high": float(d.theta_high), "theta_low": float(d.theta_low),
        "decision_ms": float(decision_ms), "metadata": dict(metadata),
        # Decision's fields are plain values, tuples and flat dicts: no deep copy (asdict) is needed.
        "plan": json.dumps({f.name: getattr(d, f.name) for f in dataclasses.fields(d)}, default=float),
        "ts_ms": ts_ms,
    }


def decision_from_record(record: Mapping) -> Decision:
    plan = json.loads(record["plan"])
    plan["models"] = tuple(plan["models"])
    plan["escalation"] = tuple(tuple(stage) for stage in plan["escalation"])
    return Decision(**plan)


def request_record(call: arbiter.Call, d: Decision, metadata: Mapping[str, str], ts_ms: int) -> dict:
    """The request id is deterministic, so a re-sent call after a restart is recognisably the same."""
    return {
        "request_id": f"{call.query_id}:{call.stage}:{call.model}", "query_id": call.query_id,
        "tenant": d.tenant, "model": call.model, "text": d.text, "strategy": d.strategy,
        "stage": call.stage, "attempt": 0, "fallback_from": call.fallback_from,
        "metadata": dict(metadata), "ts_ms": ts_ms,
    }


def response_from_record(record: Mapping) -> arbiter.Response:
    return arbiter.Response(query_id=record["query_id"], model=record["model"], answer=record["answer"],
                            ok=bool(record["ok"]), cost=float(record["cost_usd"]),
                            stage=int(record["stage"]), error=record.get("error") or "")


def score_records(v: arbiter.Verdict, domain: int, ts_ms: int) -> list[dict]:
    return [{"query_id": v.query_id, "model": m, "relevance": s.relevance, "correctness": s.correctness,
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
