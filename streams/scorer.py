"""Scorer agent: fold decisions and responses through the arbiter; send calls, scores and one answer."""

from __future__ import annotations

import asyncio

from selfevolve import arbiter, learning
from selfevolve.errors import DecodeError, ValidationError
from selfevolve.wire import (answer_record, decision_from_record, request_record, response_from_record,
                             score_records)
from streams.runtime import now_ms


def register(app, rt) -> None:
    # Per query: the event log that rebuilds its arbiter state after a restart (changelog-backed).
    table = app.Table("arbiter", default=None, partitions=rt.settings.topic_partitions)
    topic = rt.topic(rt.topics.route_decisions, rt.topics.inference_responses)

    # Live states, so the log is replayed only after a restart (a replay re-runs code checkers).
    states: dict[str, arbiter.State] = {}

    @app.agent(topic, name="scorer")
    async def scorer(stream):
        core = rt.routing()
        async for event in stream.events():
            # One merged stream of two kinds: the writer schema says which (a foreign one fails decode).
            kind = rt.codec.kind_of(event.value)
            kind = kind if kind in ("route_decision", "inference_response") else "inference_response"
            try:
                record = rt.codec.decode(kind, event.value)
            except (DecodeError, ValidationError) as e:
                await rt.dead_letter(event, e)
                continue
            qid = record["query_id"]
            log = table.get(qid) or {"decision": None, "responses": [], "done": False}
            if log["done"] or (kind == "route_decision" and log["decision"] is not None):
                continue  # already answered, or a re-delivered decision
            state = states.get(qid) or _rebuild(log, rt.settings.score_weights)
            event_obj = decision_from_record(record) if kind == "route_decision" else response_from_record(record)
            # Scoring may run a response's code against its own tests: keep the loop free meanwhile.
            state, outputs = await asyncio.to_thread(arbiter.step, state, event_obj)
            if kind == "route_decision":
                log = {**log, "decision": record}
            else:
                log = {**log, "responses": log["responses"] + [record]}
            verdicts = [o for o in outputs if isinstance(o, arbiter.Verdict)]
            sent = []
            for call in (o for o in outputs if isinstance(o, arbiter.Call)):
                backend = core["catalogue"].get(call.model).backend
                sent.append(await rt.send(rt.topics.requests_for(backend), "inference_request",
                                          request_record(call, state.decision, log["decision"]["metadata"],
                                                         now_ms()), key=qid))
            for v in verdicts:
                sent += await _deliver(rt, core, v, log["decision"])
            # The table (a changelog) is written only once the broker holds every output: a crash
            # before that re-delivers this event and repeats them; never a logged step whose
            # outputs were lost (a decision with no requests, a done query with no answer).
            await asyncio.gather(*sent)
            table[qid] = {"decision": None, "responses": [], "done": True} if verdicts else log
            if verdicts:
                states.pop(qid, None)
            else:
                states[qid] = state


async def _deliver(rt, core, v, decision_rec) -> list:
    """Send the scores and the answer; returns their acknowledgement futures."""
    ts = now_ms()
    domain = decision_rec.get("domain", -1)
    # Keyed by domain: the statistics and gap tables downstream are per domain.
    sent = [await rt.send(rt.topics.scores, "score", score, key=str(domain))
            for score in score_records(v, domain, ts)]
    latency = ts - decision_rec["ts_ms"]
    answer = answer_record(v, decision_rec["tenant"], domain, latency, ts)
    sent.append(await rt.send(rt.topics.answers, "answer", answer, key=decision_rec["tenant"]))
    vec = core["vectors"].pop(v.query_id, None)
    if vec is None:  # lost with a restart: embed again rather than forget the query
        vec = core["embedder"].encode([decision_from_record(decision_rec).text])[0]
    learning.record_delivery(core["history"], vec, v, decision_rec["tenant"], ts_ms=ts)
    return sent


def _rebuild(log, weights) -> arbiter.State:
    state = arbiter.State(weights=weights)
    if log["decision"] is None:
        return state
    state, _ = arbiter.step(state, decision_from_record(log["decision"]))
    for r in log["responses"]:
        state, _ = arbiter.step(state, response_from_record(r))
    return state
