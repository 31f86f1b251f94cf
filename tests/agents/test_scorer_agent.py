"""The scorer agent: a decision fans out calls; responses fold into one answer; duplicates are ignored."""

from __future__ import annotations

import asyncio
import time

from selfevolve.history import Record
from selfevolve.routing import RouteQuery


def _decision(h, qid: str, text: str):
    core = h.rt.routing()
    d = core["router"].route(RouteQuery(qid, text, "t1"))
    from selfevolve.wire import decision_record

    return d, decision_record(d, {"sample_id": qid}, 1.0, int(time.time() * 1000))


def _response(req: dict, answer: str, ok: bool = True) -> dict:
    return {"request_id": req["request_id"], "query_id": req["query_id"], "tenant": req["tenant"],
            "model": req["model"], "answer": answer, "confidence": -1.0, "latency_ms": 1.0,
            "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.001, "ok": ok,
            "error": None if ok else "boom", "fallback_from": req["fallback_from"], "stage": req["stage"],
            "ts_ms": 1}


def test_decision_calls_then_one_answer_even_with_duplicate_responses(harness):
    h = harness("streams.scorer")
    codec = h.rt.codec
    text = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"

    async def run():
        async with h.agent("scorer").test_context() as agent:
            d, rec = _decision(h, "q-1", text)
            await agent.put(codec.encode("route_decision", rec))
            reqs = await h.wait_for("inference_request", len(d.models))
            assert {r["model"] for r in reqs} == set(d.models)
            assert all(r["metadata"] == {"sample_id": "q-1"} for r in reqs)
            for r in reqs:
                await agent.put(codec.encode("inference_response", _response(r, "B")))
            await agent.put(codec.encode("inference_response", _response(reqs[0], "B")))  # re-delivered
            await agent.put(codec.encode("route_decision", rec))  # re-delivered decision
            await h.wait_for("answer", 1)
            await asyncio.sleep(0.5)

    asyncio.run(run())
    answers = h.of_kind("answer")
    assert len(answers) == 1
    a = answers[0]
    assert a["query_id"] == "q-1" and a["answer"] == "B" and a["tenant"] == "t1"
    assert set(a["models_called"]) >= set(h.of_kind("inference_request")[0:1][0]["model"].split())
    scores = h.of_kind("score")
    assert sum(s["winner"] for s in scores) == 1
    assert h.rt.core["history"].get("q-1") is not None  # delivered queries join the history


def test_failed_backend_falls_back_to_the_next_tier(harness):
    h = harness("streams.scorer")
    codec = h.rt.codec
    text = "Write a haiku about rain."
    core = h.rt.routing()
    cheap = core["catalogue"].by_role("student")[0].name
    # A near-identical past query that the cheap student got right makes the route targeted.
    for i in range(5):
        core["history"].add(core["embedder"].encode([text])[0],
                            Record(query_id=f"past-{i}", costs={cheap: 1e-5}, quality={cheap: 1.0}, winner=cheap))

    async def run():
        async with h.agent("scorer").test_context() as agent:
            d, rec = _decision(h, "q-2", text)
            await agent.put(codec.encode("route_decision", rec))
            reqs = await h.wait_for("inference_request", len(d.models))
            candidates = [r for r in reqs if d.fallbacks.get(r["model"]) not in (None, *d.models)]
            assert candidates, f"no call in {d.strategy} {d.models} can fall back"
            failing = candidates[0]
            for r in reqs:
                await agent.put(codec.encode("inference_response", _response(r, "x", ok=r is not failing)))
            more = await h.wait_for("inference_request", len(d.models) + 1, timeout=30)
            fb = [r for r in more if r["fallback_from"] == failing["model"]]
            assert fb, "no fallback request was sent"
            await agent.put(codec.encode("inference_response", _response(fb[0], "Soft rain on the roof")))
            await h.wait_for("answer", 1)

    asyncio.run(run())
    (a,) = h.of_kind("answer")
    assert a["fallbacks"], "the answer must record the fallback"


def test_changelog_is_written_only_after_the_broker_acknowledges_the_answer(harness):
    """A crash before the acknowledgement must re-deliver the step, so the table may not say done yet."""
    h = harness("streams.scorer")
    codec = h.rt.codec
    table = h.app.tables["arbiter"]
    text = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"

    async def run():
        async with h.agent("scorer").test_context() as agent:
            d, rec = _decision(h, "q-ack", text)
            await agent.put(codec.encode("route_decision", rec))
            reqs = await h.wait_for("inference_request", len(d.models))
            h.hold_acks = True
            for r in reqs:
                await agent.put(codec.encode("inference_response", _response(r, "B")))
            await h.wait_for("answer", 1)
            await asyncio.sleep(0.3)
            before = table.data.get("q-ack")
            h.release_acks()
            for _ in range(100):
                if (table.data.get("q-ack") or {}).get("done"):
                    break
                await asyncio.sleep(0.05)
            return before, table.data.get("q-ack")

    before, after = asyncio.run(run())
    assert h.of_kind("answer"), "the answer was sent"
    assert not (before or {}).get("done"), "the query was marked done before its answer was acknowledged"
    assert after["done"]
