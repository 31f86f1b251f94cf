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

from selfevolve.scoring import arbiter, checkers

from selfevolve.routing import learning
from selfevolve.errors import ValidationError
from selfevolve.wire.tenancy import record_key
from selfevolve.wire.records import (answer_record, decision_from_record, request_record, response_from_record,
                             score_records)
from streams.changelog import ChangelogTable
from streams.runtime import infrastructure, now_ms, oversized

log = logging.getLogger("selfevolve.scorer")
DONE = {"done": True}  # what an answered query's log shrinks to: enough to ignore its late events


class Scorer:
    """The scorer's state: the changelog-backed logs and the live arbiter states they rebuild."""

    def __init__(self, rt, core) -> None:
        self.rt, self.core = rt, core
        self.table = ChangelogTable(rt.settings, "scorer-state")
        self.limits = checkers.Limits.from_settings(rt.settings)  # the sandbox answers' code is checked in
        # Keys are canonical query keys (tenant/query id): two tenants' same id are two queries.
        self.states: dict[tuple[int, str], arbiter.State] = {}  # (partition, query key) -> live state
        # Answered queries, oldest first: their markers are kept for the last `scorer_done_keep` only, so
        # memory and restore time stay bounded (a re-sent decision older than that is answered again).
        self.done: OrderedDict[tuple[int, str], None] = OrderedDict()

    def _mark_done(self, partition: int, qid: str, source: str = "") -> None:
        # The marker keeps the decision's source, to tell a re-delivered decision from a reused id.
        self.table.put(partition, qid, {**DONE, "source": source} if source else DONE)
        self.done[(partition, qid)] = None
        while len(self.done) > self.rt.settings.scorer_done_keep:
            p, q = self.done.popitem(last=False)[0]
            self.table.delete(p, q)

    def fold(self, events: list[tuple[int, str, dict]], on_error=None) -> list[tuple[dict, object, list, int]]:
        """Fold (partition, kind, record) events in order; returns (decision record, Decision, outputs, index of
        the event) per event that moved a query on. Pure but for the table and the state cache; runs in a
        worker thread. An event that raises changes nothing: with on_error, `on_error(index, error)` is told
        and the fold goes on; without, the error propagates."""
        try:
            self._check_code(events)
        except Exception:  # noqa: BLE001 - only a speed-up: each answer's scoring runs its check itself
            log.exception("the batch's code checks failed; scoring checks each answer on its own")
        out = []
        for i, (partition, kind, record) in enumerate(events):
            try:
                out += self._fold_one(partition, kind, record, i)
            except Exception as e:  # noqa: BLE001 - one poison event must not stop the batch
                if on_error is None:
                    raise
                on_error(i, e)
        return out

    def _fold_one(self, partition: int, kind: str, record: dict, i: int) -> list[tuple[dict, object, list, int]]:
        qid = record_key(record)
        # A decision's plan is read first: one that is not a Decision is dead-lettered whatever state its
        # (tenant, id) is in, not dropped unread as a late or repeated event.
        parsed = decision_from_record(record) if kind == "route_decision" else None
        entry = self.table.get(partition, qid) or {"decision": None, "responses": []}
        if kind == "route_decision" and self._reused(entry, record):
            raise ValidationError(f"duplicate query id {record['query_id']} for tenant {record['tenant']}: "
                                  "another query with this (tenant, id) was already received")
        if entry.get("done") or (kind == "route_decision" and self._answered(record)):
            return []  # answered already: a re-delivered or late event
        if kind == "route_decision":
            if entry["decision"] is not None:
                return []  # a re-delivered decision
            decision, event = record, parsed
            after = {**entry, "decision": record}
        else:
            if entry["decision"] is None:
                raise ValidationError("a response to no call this scorer made: its query has no decision here")
            if any(r["request_id"] == record["request_id"] for r in entry["responses"]):
                return []  # a re-delivered response
            decision, event = entry["decision"], response_from_record(record)
            after = {**entry, "responses": entry["responses"] + [record]}
        key = (partition, qid)
        state = self.states.get(key) or _rebuild(entry, self.rt.settings.score_weights, self.limits)
        arbiter.admit(state, event)  # a response to no awaited call: dead-lettered, never logged nor run
        state, outputs = arbiter.step(state, event)
        if any(isinstance(o, arbiter.Verdict) for o in outputs):
            self.states.pop(key, None)
            self._mark_done(partition, qid, decision.get("source", ""))
        else:
            # put() first: a log that outgrows one changelog record raises here, before any state changed.
            self.table.put(partition, qid, after)
            self.states[key] = state
        return [(decision, state.decision, outputs, i)]

    def _seen_source(self, entry: dict, record: dict) -> str | None:
        """The source of the decision already known for this query's (tenant, id), or None if none is."""
        if entry.get("done"):
            return entry.get("source", "")
        if entry.get("decision") is not None:
            return entry["decision"].get("source", "")
        past = self.core["history"].get(record["query_id"], record["tenant"])  # answered, marker evicted
        return None if past is None else past.source

    def _reused(self, entry: dict, record: dict) -> bool:
        """A decision for a known (tenant, id) from another query record, not a re-delivery of the same.
        Decisions without a source (written before v3) count as re-deliveries, as they always did."""
        seen = self._seen_source(entry, record)
        return bool(seen) and bool(record.get("source")) and seen != record["source"]

    def _answered(self, record: dict) -> bool:
        """A re-delivered decision whose done marker is gone but which the history holds as answered."""
        past = self.core["history"].get(record["query_id"], record["tenant"])
        return past is not None and bool(record.get("source")) and past.source == record["source"]

    def _check_code(self, events: list[tuple[int, str, dict]]) -> None:
        """Run the code of this batch's answers to code questions concurrently, ahead of the fold, so the
        arbiter's scoring finds each check done (cached) instead of running them one after another."""
        decisions = {(p, record_key(r)): r for p, kind, r in events if kind == "route_decision"}
        is_code: dict[tuple[int, str], bool] = {}  # one prompt parse per query, not per response
        answers = []
        for partition, kind, record in events:
            if kind != "inference_response" or not record["answer"]:
                continue
            key = (partition, record_key(record))
            if key not in is_code:
                decision = decisions.get(key) or (self.table.get(*key) or {}).get("decision")
                is_code[key] = (decision is not None
                                and checkers.kind(decision_from_record(decision).text) == checkers.CODE)
            if is_code[key] and self._awaits(key, record, decisions.get(key)):
                answers.append(record["answer"])
        if answers:
            checkers.run_many(answers, workers=self.rt.settings.code_check_workers, limits=self.limits)

    def _awaits(self, key: tuple[int, str], record: dict, batch_decision: dict | None) -> bool:
        """Whether a response answers a call this scorer made and awaits: no other record's code is run."""
        entry = self.table.get(*key) or {}
        if entry.get("decision") is not None:
            state = self.states.get(key) or _rebuild(entry, self.rt.settings.score_weights, self.limits)
        elif batch_decision is not None:
            state, _ = arbiter.start(decision_from_record(batch_decision), code_limits=self.limits)
        else:
            return False
        return arbiter.rejection(state, response_from_record(record)) is None

    def drop(self, partitions: set[int]) -> None:
        self.table.drop(partitions)
        self.states = {k: v for k, v in self.states.items() if k[0] not in partitions}
        self.done = OrderedDict((k, None) for k in self.done if k[0] not in partitions)

    async def restore(self, partitions: set[int]) -> None:
        self.drop(partitions)  # what this worker held of them before is stale: another may have moved on
        await self.table.restore(partitions)
        for p in partitions:  # restored in changelog order, which is the order they were answered
            self.done.update(((p, q), None) for q, v in self.table.data.get(p, {}).items() if v.get("done"))


def _rebuild(entry: dict, weights, limits: checkers.Limits = checkers.DEFAULT_LIMITS) -> arbiter.State:
    """The arbiter state of a logged query: after a restart, or when its partition moved here."""
    state = arbiter.State(weights=weights, code_limits=limits)
    if entry.get("decision") is None:
        return state
    state, _ = arbiter.step(state, decision_from_record(entry["decision"]))
    for r in entry["responses"]:
        state, _ = arbiter.step(state, response_from_record(r))
    return state


async def score_batch(rt, scorer: Scorer, messages) -> None:
    """Steps 1-3 above for raw messages; returns once their outputs and the changelog are acknowledged."""
    acks, events, sources = [], [], []
    for msg in messages:
        # One merged stream of two kinds: the writer schema says which (a foreign one fails decode).
        kind = rt.codec.kind_of(msg.value)
        kind = kind if kind in ("route_decision", "inference_response") else "inference_response"
        try:
            too_big = oversized(msg.value, rt.settings.max_record_bytes)  # before decoding, as the router does
            if too_big is not None:
                raise too_big
            events.append((msg.partition, kind, rt.codec.decode(kind, msg.value)))
            sources.append(msg)
        except Exception as e:  # noqa: BLE001 - whatever one record does wrong is that record's dead letter
            acks.append(await rt.send_dead_letter(msg, e))
    failed: list[tuple[int, BaseException]] = []
    steps = await asyncio.to_thread(scorer.fold, events, lambda i, e: failed.append((i, e))) if events else []
    for i, e in failed:  # e.g. a decision whose plan is not a Decision: nothing of it was kept
        log.warning("dead-lettering %s at %s/%s: %s", events[i][1], sources[i].partition, sources[i].offset, e)
        acks.append(await rt.send_dead_letter(sources[i], e))
    core = scorer.core
    verdicts = [(rec, v) for rec, _, outs, _ in steps for v in outs if isinstance(v, arbiter.Verdict)]
    lost = [(rec, v) for rec, v in verdicts if record_key(rec) not in core["vectors"]]
    if lost:  # the router's vector was lost with a restart: embed again rather than forget the query
        try:
            vecs = await asyncio.to_thread(core["embedder"].encode, [decision_from_record(r).text for r, _ in lost])
            core["vectors"].update({record_key(r): vec for (r, _), vec in zip(lost, vecs)})
        except Exception:  # noqa: BLE001 - each delivery without a vector is dead-lettered below instead
            log.exception("re-embedding %d answered queries failed", len(lost))
    for record, decision, outputs, i in steps:
        try:
            outs = _outputs(rt, core, record, decision, outputs)
        except Exception as e:  # noqa: BLE001 - e.g. a forged plan naming a model not in the catalogue
            if infrastructure(e):
                raise
            log.warning("dead-lettering %s at %s/%s: %s", events[i][1], sources[i].partition, sources[i].offset, e)
            acks.append(await rt.send_dead_letter(sources[i], e))
            continue
        for topic, kind, out, key in outs:
            acks.append(await rt.send(topic, kind, out, key=key))
        for v in (o for o in outputs if isinstance(o, arbiter.Verdict)):
            try:
                acks += await _deliver(rt, core, v, record)
            except Exception as e:  # noqa: BLE001 - a delivery that fails must not fail the whole batch
                if infrastructure(e):
                    raise
                log.exception("dead-lettering %s at %s/%s: its delivery failed", events[i][1],
                              sources[i].partition, sources[i].offset)
                acks.append(await rt.send_dead_letter(sources[i], e))
    for ack in acks:
        await ack
    # Only now, with every output on the broker, may the logs say these events were seen.
    await scorer.table.flush(rt.send_raw)


def _outputs(rt, core, record: dict, decision, outputs: list) -> list[tuple[str, str, dict, str]]:
    """(topic, kind, record, key) of one step's calls, each encoded once to prove it can be sent: a step
    that cannot be sent fails here, before any of it is."""
    out = []
    for call in (o for o in outputs if isinstance(o, arbiter.Call)):
        request = request_record(call, decision, record["metadata"], now_ms())
        rt.codec.encode("inference_request", request)
        out.append((rt.topics.requests_for(core["catalogue"].get(call.model).backend), "inference_request",
                    request, record_key(record)))  # the query's key: its response comes to this partition
    return out


async def _deliver(rt, core, v, decision_rec) -> list:
    """Send the scores and the answer, and add the query to the history; returns the ack futures."""
    ts = now_ms()
    domain = decision_rec.get("domain", -1)
    # Keyed by domain: the statistics and gap tables downstream are per domain.
    tenant, source = decision_rec["tenant"], decision_rec.get("source", "")
    acks = [await rt.send(rt.topics.scores, "score", score, key=str(domain))
            for score in score_records(v, domain, ts, tenant)]
    latency = ts - decision_rec["ts_ms"]
    answer = answer_record(v, tenant, domain, latency, ts)
    acks.append(await rt.send(rt.topics.answers, "answer", answer, key=tenant))  # internal: every tenant's
    if rt.topics.tenant_of(source.rsplit(":", 2)[0]) == tenant:
        # Asked on its own queries.<T>: the answer goes to answers.<T> too, which only T may read.
        acks.append(await rt.send(rt.topics.answers_for(tenant), "answer", answer, key=tenant))
    learning.record_delivery(core["history"], core["vectors"].pop(record_key(decision_rec)), v, tenant, ts_ms=ts,
                             source=source)
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
        # transactional_loop holds back batches while this runs (aiokafka may hand out records of newly
        # assigned partitions before it), so no batch is folded into state that the restore then replaces.
        mine = {tp.partition for tp in assigned}
        scorer.drop(owned - mine)
        await scorer.restore(mine - owned)  # before the first batch from them is folded
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
