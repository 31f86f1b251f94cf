"""Scorer: fold decisions and responses through the arbiter; send calls, scores and one answer per query.

The scorer reads `route-decisions` and `inference-responses` with its own aiokafka consumer (group
`<prefix>scorer`) and keeps each open query's event log in a table backed by a compacted changelog
(streams/changelog.py), as the router and the sink read with their own consumers (Faust's consumer
skipped events after a SIGKILL with a backlog). What one poll returns is one batch, in one Kafka
transaction:

1. every event is folded through `arbiter.step` (off the loop: scoring may run a response's code, and
   the batch's code answers run concurrently first);
2. the outputs (requests, scores, answers) are sent, and the broker's acknowledgements awaited;
3. the changed logs are written to the changelog, and awaited;
4. the batch's offsets are sent to the transaction, which commits.

A crash anywhere aborts the transaction: read_committed readers never see its outputs, the restarted
scorer rebuilds its logs from the committed changelog and folds the batch again, so each query is
answered once. Without a transaction (the agent tests) the order of 2 and 3 still means a crash can only
repeat outputs, never lose them: the logs say an event was seen only once its outputs are on the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from selfevolve import arbiter, checkers, learning
from selfevolve.errors import DecodeError, ValidationError
from selfevolve.wire import (answer_record, decision_from_record, request_record, response_from_record,
                             score_records)
from streams.changelog import ChangelogTable
from streams.runtime import now_ms

log = logging.getLogger("selfevolve.scorer")
DONE = {"done": True}  # what an answered query's log shrinks to: enough to ignore its late events


class Scorer:
    """The scorer's state: the changelog-backed logs and the live arbiter states they rebuild."""

    def __init__(self, rt, core) -> None:
        self.rt, self.core = rt, core
        self.table = ChangelogTable(rt.settings, "scorer-state")
        self.states: dict[tuple[int, str], arbiter.State] = {}  # (partition, query id) -> live state
        # Answered queries, oldest first: their markers are kept for the last `scorer_done_keep` only, so
        # memory and restore time stay bounded (a re-sent decision older than that is answered again).
        self.done: OrderedDict[tuple[int, str], None] = OrderedDict()

    def _mark_done(self, partition: int, qid: str) -> None:
        self.table.put(partition, qid, DONE)
        self.done[(partition, qid)] = None
        while len(self.done) > self.rt.settings.scorer_done_keep:
            p, q = self.done.popitem(last=False)[0]
            self.table.delete(p, q)

    def fold(self, events: list[tuple[int, str, dict]]) -> list[tuple[dict, object, list]]:
        """Fold (partition, kind, record) events in order; returns (decision record, Decision, outputs) per event
        that moved a query on. Pure but for the table and the state cache; runs in a worker thread."""
        self._check_code(events)
        out = []
        for partition, kind, record in events:
            qid = record["query_id"]
            entry = self.table.get(partition, qid) or {"decision": None, "responses": []}
            if entry.get("done"):
                continue  # answered already: a re-delivered or late event
            if kind == "route_decision":
                if entry["decision"] is not None:
                    continue  # a re-delivered decision
                decision, event = record, decision_from_record(record)
                after = {**entry, "decision": record}
            else:
                if entry["decision"] is None:
                    continue  # no decision here: a response to a call this scorer did not make
                if any(r["request_id"] == record["request_id"] for r in entry["responses"]):
                    continue  # a re-delivered response
                decision, event = entry["decision"], response_from_record(record)
                after = {**entry, "responses": entry["responses"] + [record]}
            key = (partition, qid)
            state = self.states.get(key) or _rebuild(entry, self.rt.settings.score_weights)
            state, outputs = arbiter.step(state, event)
            if any(isinstance(o, arbiter.Verdict) for o in outputs):
                self.states.pop(key, None)
                self._mark_done(partition, qid)
            else:
                self.states[key] = state
                self.table.put(partition, qid, after)
            out.append((decision, state.decision, outputs))
        return out

    def _check_code(self, events: list[tuple[int, str, dict]]) -> None:
        """Run the code of this batch's answers to code questions concurrently, ahead of the fold, so the
        arbiter's scoring finds each check done (cached) instead of running them one after another."""
        decisions = {(p, r["query_id"]): r for p, kind, r in events if kind == "route_decision"}
        is_code: dict[tuple[int, str], bool] = {}  # one prompt parse per query, not per response
        answers = []
        for partition, kind, record in events:
            if kind != "inference_response" or not record["answer"]:
                continue
            key = (partition, record["query_id"])
            if key not in is_code:
                decision = decisions.get(key) or (self.table.get(*key) or {}).get("decision")
                is_code[key] = (decision is not None
                                and checkers.kind(decision_from_record(decision).text) == checkers.CODE)
            if is_code[key]:
                answers.append(record["answer"])
        if answers:
            checkers.run_many(answers, workers=self.rt.settings.code_check_workers)

    def drop(self, partitions: set[int]) -> None:
        self.table.drop(partitions)
        self.states = {k: v for k, v in self.states.items() if k[0] not in partitions}
        self.done = OrderedDict((k, None) for k in self.done if k[0] not in partitions)

    async def restore(self, partitions: set[int]) -> None:
        self.drop(partitions)  # what this worker held of them before is stale: another may have moved on
        await self.table.restore(partitions)
        for p in partitions:  # restored in changelog order, which is the order they were answered
            self.done.update(((p, q), None) for q, v in self.table.data.get(p, {}).items() if v.get("done"))


def _rebuild(entry: dict, weights) -> arbiter.State:
    """The arbiter state of a logged query: after a restart, or when its partition moved here."""
    state = arbiter.State(weights=weights)
    if entry.get("decision") is None:
        return state
    state, _ = arbiter.step(state, decision_from_record(entry["decision"]))
    for r in entry["responses"]:
        state, _ = arbiter.step(state, response_from_record(r))
    return state


async def score_batch(rt, scorer: Scorer, messages) -> None:
    """Steps 1-3 above for raw messages; returns once their outputs and the changelog are acknowledged."""
    acks, events = [], []
    for msg in messages:
        # One merged stream of two kinds: the writer schema says which (a foreign one fails decode).
        kind = rt.codec.kind_of(msg.value)
        kind = kind if kind in ("route_decision", "inference_response") else "inference_response"
        try:
            events.append((msg.partition, kind, rt.codec.decode(kind, msg.value)))
        except (DecodeError, ValidationError) as e:
            acks.append(await rt.send_dead_letter(msg, e))
    steps = await asyncio.to_thread(scorer.fold, events) if events else []
    core = scorer.core
    verdicts = [(rec, v) for rec, _, outs in steps for v in outs if isinstance(v, arbiter.Verdict)]
    lost = [(rec, v) for rec, v in verdicts if v.query_id not in core["vectors"]]
    if lost:  # the router's vector was lost with a restart: embed again rather than forget the query
        vecs = await asyncio.to_thread(core["embedder"].encode, [decision_from_record(r).text for r, _ in lost])
        core["vectors"].update({v.query_id: vec for (_, v), vec in zip(lost, vecs)})
    for record, decision, outputs in steps:
        for call in (o for o in outputs if isinstance(o, arbiter.Call)):
            backend = core["catalogue"].get(call.model).backend
            acks.append(await rt.send(rt.topics.requests_for(backend), "inference_request",
                                      request_record(call, decision, record["metadata"], now_ms()),
                                      key=call.query_id))
        for v in (o for o in outputs if isinstance(o, arbiter.Verdict)):
            acks += await _deliver(rt, core, v, record)
    for ack in acks:
        await ack
    # Only now, with every output on the broker, may the logs say these events were seen.
    await scorer.table.flush(rt.send_raw)


async def _deliver(rt, core, v, decision_rec) -> list:
    """Send the scores and the answer, and add the query to the history; returns the ack futures."""
    ts = now_ms()
    domain = decision_rec.get("domain", -1)
    # Keyed by domain: the statistics and gap tables downstream are per domain.
    acks = [await rt.send(rt.topics.scores, "score", score, key=str(domain))
            for score in score_records(v, domain, ts)]
    latency = ts - decision_rec["ts_ms"]
    answer = answer_record(v, decision_rec["tenant"], domain, latency, ts)
    acks.append(await rt.send(rt.topics.answers, "answer", answer, key=decision_rec["tenant"]))
    learning.record_delivery(core["history"], core["vectors"].pop(v.query_id), v, decision_rec["tenant"], ts_ms=ts)
    return acks


async def run_scorer(rt, stop: asyncio.Event | None = None) -> None:
    """Consume decisions and responses until cancelled (or `stop` is set): a batch per poll, each batch's
    outputs, changelog writes and consumed offsets in one Kafka transaction."""
    from streams.kafka_io import ensure_topics, transactional_loop

    core = await asyncio.to_thread(rt.routing)
    scorer = Scorer(rt, core)
    await ensure_topics(rt.settings, [scorer.table.topic], compact=True)
    owned: set[int] = set()

    async def on_assign(assigned) -> None:
        mine = {tp.partition for tp in assigned}
        scorer.drop(owned - mine)
        await scorer.restore(mine - owned)  # before the first fetch from them
        owned.clear()
        owned.update(mine)

    async def handle(producer, messages) -> None:
        await score_batch(rt.through(producer), scorer, messages)

    await transactional_loop(rt.settings, "scorer", [rt.topics.route_decisions, rt.topics.inference_responses],
                             rt.settings.scorer_batch_size, handle, stop, on_assign=on_assign)


def register(app, rt) -> None:
    @app.task
    async def scorer():
        await run_scorer(rt)
