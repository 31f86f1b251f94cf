"""The scorer as a fold: decisions and responses in; calls, scores, answers and history deliveries out."""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.routing.reuse import CACHED
from selfevolve.scoring import arbiter, checkers
from selfevolve.wire.records import (answer_record, decision_from_record, history_delivery, request_record,
                                     response_from_record,
                                     score_records, vector_of)
from selfevolve.wire.tenancy import DEFAULT_TENANT, record_key
from selfevolve.wire.topics import Topics

# Room a changelog record needs beyond its value: the key's framing and the record batch's headers, under
# the broker's message.max.bytes (streams/changelog.py checks its writes against the same).
CHANGELOG_RECORD_OVERHEAD = 1024

Known = Callable[[str, str], Any]  # (query id, tenant) -> the routing history's Record of it, or None


@dataclass(frozen=True)
class QueryLog:
    """One open query's events, in the order they were folded: its decision record, then the responses."""

    decision: dict[str, Any]
    responses: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        # The vector is bytes on the wire; JSON carries it as base64.
        vec = self.decision.get("vector")
        decision = {**self.decision, "vector": base64.b64encode(vec).decode()} if vec is not None else self.decision
        return {"decision": decision, "responses": list(self.responses)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueryLog:
        decision = dict(data["decision"])
        if isinstance(decision.get("vector"), str):
            decision["vector"] = base64.b64decode(decision["vector"])
        return cls(decision, tuple(data.get("responses", ())))


@dataclass(frozen=True)
class Answered:
    """What an answered query's log shrinks to: enough to ignore its late events and to tell a re-delivered
    decision (same source) from another query reusing its (tenant, id)."""

    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"done": True, "source": self.source} if self.source else {"done": True}


@dataclass
class ScorerState:
    """Open queries' logs and answered markers (oldest first, at most the fold's `done_keep`), by query key
    (tenant/query id). `arbiters` caches the arbiter state each log rebuilds to: derived, never persisted,
    rebuilt on first use after from_json. Mutated in place by ScorerFold.step (copying up to `done_keep`
    markers per event would cost more than scoring), and only once a step can no longer raise."""

    logs: dict[str, QueryLog] = field(default_factory=dict)
    answered: OrderedDict[str, Answered] = field(default_factory=OrderedDict)
    arbiters: dict[str, arbiter.State] = field(default_factory=dict, compare=False, repr=False)

    def entry_json(self, key: str) -> dict[str, Any] | None:
        """What the changelog stores for key now (None: nothing, a tombstone)."""
        if key in self.logs:
            return self.logs[key].to_json()
        return self.answered[key].to_json() if key in self.answered else None

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Every entry by key: the answered markers first, oldest first, then the open logs."""
        return {**{k: v.to_json() for k, v in self.answered.items()},
                **{k: v.to_json() for k, v in self.logs.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, Any]]) -> ScorerState:
        """The state of entries as to_json (or a changelog, in its order) gives them."""
        state = cls()
        for key, value in data.items():
            if value.get("done"):
                state.answered[key] = Answered(value.get("source", ""))
            elif value.get("decision") is not None:
                state.logs[key] = QueryLog.from_json(value)
        return state


@dataclass(frozen=True)
class _Change:
    """A step's effect, computed before anything is committed: the key's new log (None: answered)."""

    key: str
    outs: list[Out]
    log: QueryLog | None = None
    arbiter: arbiter.State | None = None
    answered: Answered | None = None


class ScorerFold:
    """route_decision -> the plan's calls (inference_request); inference_response -> fallback and escalation
    calls, and once the arbiter delivers: the scores, the answer (plus the tenant's own copy when it asked on
    its own queries topic) and one `history` Out (the delivery every serve worker's routing history learns).

    Environment: settings (score weights, sandbox limits, the changelog record size, the topic prefix), the
    catalogue (each call's backend), `known(query_id, tenant)` (the routing history's record of a query: an
    answered query whose marker was evicted), an optional codec (an output it cannot encode fails its step,
    before anything is committed) and `done_keep` (answered markers kept; settings.scorer_done_keep).
    Latency is the one wall-clock figure: a response event's payload may be {"now_ms": the host's clock when
    it stepped it}, and the answer's latency_ms runs from the decision's ts_ms to it (to the completing
    response's ts_ms without one); nothing is decided on it.
    """

    name = "scorer"
    consumes = ("route_decision", "inference_response")

    def __init__(self, settings, catalogue, known: Known | None = None, *, codec=None,
                 done_keep: int | None = None) -> None:
        self.catalogue, self.codec = catalogue, codec
        self.known: Known = known or (lambda query_id, tenant: None)
        self.weights = tuple(settings.score_weights)
        self.limits = checkers.Limits.from_settings(settings)  # the sandbox an answer's code is checked in
        self.code_workers = settings.code_check_workers
        self.topics = Topics.from_settings(settings)
        self.done_keep = settings.scorer_done_keep if done_keep is None else done_keep
        self.log_bytes = settings.kafka_max_message_bytes - CHANGELOG_RECORD_OVERHEAD

    def initialize(self) -> ScorerState:
        return ScorerState()

    def step(self, state: ScorerState, event: Event) -> tuple[ScorerState, list[Out]]:
        state, outs, _ = self.step_logged(state, event)
        return state, outs

    def step_logged(self, state: ScorerState, event: Event) -> tuple[ScorerState, list[Out], list[str]]:
        """step, and the keys whose persisted entry (entry_json) it changed, for a changelog to write."""
        if event.kind == "route_decision":
            change = self._decision(state, event.record)
        elif event.kind == "inference_response":
            now = event.payload.get("now_ms") if isinstance(event.payload, dict) else None
            change = self._response(state, event.record, now)
        else:
            return state, [], []
        if change is None:
            return state, [], []  # a re-delivered or late event
        if self.codec is not None:  # proven sendable before any of it is kept
            for o in change.outs:
                self.codec.encode(o.kind, o.record)
        return state, change.outs, self._commit(state, change)

    def _decision(self, state: ScorerState, record: dict) -> _Change | None:
        key = record_key(record)
        # The plan and the vector are read first: a decision that holds no Decision, or a vector that is not
        # one, is refused whatever state its (tenant, id) is in, not dropped unread as a repeat.
        parsed = decision_from_record(record)
        vector_of(record)
        tenant = record.get("tenant") or DEFAULT_TENANT
        past = self.known(record["query_id"], tenant)
        if self._reused(state, key, record, past):
            raise ValidationError(f"duplicate query id {record['query_id']} for tenant {tenant}: "
                                  "another query with this (tenant, id) was already received")
        source = record.get("source")
        if key in state.answered or key in state.logs or (past is not None and source and past.source == source):
            return None  # answered already (its marker, or the history), or a re-delivered decision
        if parsed.strategy == CACHED:
            return self._reuse(key, record, parsed)
        arb, calls = arbiter.step(self._blank(), parsed)
        log = QueryLog(record)
        self._check_size(key, log)
        return _Change(key, self._requests(record, parsed, calls), log=log, arbiter=arb)

    def _reuse(self, key: str, record: dict, parsed) -> _Change:
        """A decision answered from the cache: its answer and history event now, no call made, nothing paid."""
        model = parsed.models[0] if parsed.models else ""
        verdict = arbiter.Verdict(query_id=parsed.query_id, winner=model or None, answer=record.get("cached_answer", ""),
                                  confidence=float(parsed.estimates.get(model, 0.0)), scores={}, models_called=(),
                                  fallbacks=(), cost=0.0, strategy=CACHED, stages=0)
        outs = self._deliver(key, record, parsed.text, verdict, {"ts_ms": record["ts_ms"]}, None,
                             cached_from=record.get("cached_from", ""))
        return _Change(key, outs, answered=Answered(record.get("source", "")))

    def _reused(self, state: ScorerState, key: str, record: dict, past) -> bool:
        """A decision for a known (tenant, id) from another query record, not a re-delivery of the same.
        Decisions without a source (written before v3) count as re-deliveries, as they always did."""
        if key in state.answered:
            seen = state.answered[key].source
        elif key in state.logs:
            seen = state.logs[key].decision.get("source", "")
        else:
            seen = None if past is None else past.source  # answered, its marker evicted
        return bool(seen) and bool(record.get("source")) and seen != record["source"]

    def _response(self, state: ScorerState, record: dict, now_ms: int | None) -> _Change | None:
        key = record_key(record)
        if key in state.answered:
            return None  # a late response to an answered query
        log = state.logs.get(key)
        if log is None:
            raise ValidationError("a response to no call this scorer made: its query has no decision here")
        if any(r["request_id"] == record["request_id"] for r in log.responses):
            return None  # a re-delivered response
        response = response_from_record(record)
        arb = state.arbiters.get(key) or self._rebuild(log)
        arbiter.admit(arb, response)  # a response to no awaited call raises: never logged, its code never run
        arb, outputs = arbiter.step(arb, response)
        outs = self._requests(log.decision, arb.decision, [o for o in outputs if isinstance(o, arbiter.Call)])
        verdict = next((o for o in outputs if isinstance(o, arbiter.Verdict)), None)
        if verdict is None:
            after = replace(log, responses=log.responses + (record,))
            self._check_size(key, after)
            return _Change(key, outs, log=after, arbiter=arb)
        outs += self._deliver(key, log.decision, arb.decision.text, verdict, record, now_ms)
        return _Change(key, outs, answered=Answered(log.decision.get("source", "")))

    def _requests(self, decision: dict, parsed, calls: list[arbiter.Call]) -> list[Out]:
        """One request per call, at its decision's event time, keyed by the query so that its response comes
        back to this query's partition; a model not in the catalogue raises."""
        key = record_key(decision)
        return [Out("inference_request", request_record(c, parsed, decision["metadata"], decision["ts_ms"]), key,
                    f"inference-requests.{self.catalogue.get(c.model).backend}") for c in calls]

    def _deliver(self, key: str, decision: dict, text: str, v: arbiter.Verdict, response: dict,
                 now_ms: int | None, cached_from: str = "") -> list[Out]:
        """The scores (keyed by domain: the statistics and gap tables downstream are per domain), the answer
        and the history event every serve worker learns from, at the event time of the response that
        completed the query."""
        ts = int(response.get("ts_ms") or decision["ts_ms"])
        domain, source = decision.get("domain", -1), decision.get("source", "")
        tenant = decision.get("tenant") or DEFAULT_TENANT
        outs = [Out("score", s, str(domain), "scores") for s in score_records(v, domain, ts, tenant)]
        latency = (ts if now_ms is None else now_ms) - decision["ts_ms"]
        answer = answer_record(v, tenant, domain, latency, ts)
        outs.append(Out("answer", answer, tenant, "answers"))  # internal: every tenant's answers
        if self.topics.tenant_of(source.rsplit(":", 2)[0]) == tenant:
            # Asked on its own queries.<T>: the answer goes to answers.<T> too, which only T may read.
            outs.append(Out("answer", dict(answer), tenant, f"answers.{tenant}"))
        # vector None (a decision written before v4): the host embeds the query's text again before sending.
        history = history_delivery(v, tenant, text, vector_of(decision), domain, ts, source, cached_from)
        # The Verdict rides along for in-memory runs (the benchmarks' outcomes); only the record is sent.
        return outs + [Out("history", history, key, "history", payload=v)]

    def _commit(self, state: ScorerState, change: _Change) -> list[str]:
        """Apply a computed step (nothing here raises); returns the keys whose entries changed."""
        key, changed = change.key, [change.key]
        if change.log is not None:
            state.logs[key] = change.log
            state.arbiters[key] = change.arbiter
            return changed
        state.logs.pop(key, None)
        state.arbiters.pop(key, None)
        state.answered[key] = change.answered
        while len(state.answered) > self.done_keep:  # the oldest go; a re-sent decision older is checked
            old, _ = state.answered.popitem(last=False)  # against the history instead
            if old != key:
                changed.append(old)
        return changed

    def _blank(self) -> arbiter.State:
        return arbiter.State(weights=self.weights, code_limits=self.limits)

    def _rebuild(self, log: QueryLog) -> arbiter.State:
        """The arbiter state a log folds to: after a restore, or when its partition moved here."""
        arb, _ = arbiter.step(self._blank(), decision_from_record(log.decision))
        for r in log.responses:
            arb, _ = arbiter.step(arb, response_from_record(r))
        return arb

    def _check_size(self, key: str, log: QueryLog) -> None:
        """A log that would outgrow one changelog record is refused here, before anything changed: flushing
        it would fail its whole batch on every retry."""
        n = len(json.dumps(log.to_json()).encode())
        limit = self.log_bytes - len(key.encode())
        if n > limit:
            raise ValidationError(f"scorer log of {key[:100]!r} would be {n} bytes, over the {limit}-byte "
                                  "changelog record limit")

    def code_answers(self, state: ScorerState, events: Iterable[Event]) -> list[str]:
        """The answers among `events` to code questions that answer a call still awaited (given `state` and
        the decisions among the events): what `prefetch` checks. Pure; an event it cannot read is skipped."""
        events = list(events)
        decisions = {record_key(e.record): e.record for e in events if e.kind == "route_decision"}
        is_code: dict[str, bool] = {}  # one prompt parse per query, not per response
        answers = []
        for e in events:
            if e.kind != "inference_response" or not e.record.get("answer"):
                continue
            try:
                if self._awaited_code(state, e.record, decisions, is_code):
                    answers.append(e.record["answer"])
            except Exception:  # noqa: BLE001 - only a speed-up: its step reports what is wrong with it
                continue
        return answers

    def _awaited_code(self, state: ScorerState, record: dict, decisions: dict, is_code: dict[str, bool]) -> bool:
        key = record_key(record)
        log = state.logs.get(key)
        if key in state.answered or (log is None and key not in decisions):
            return False
        decision = log.decision if log is not None else decisions[key]
        if key not in is_code:
            is_code[key] = checkers.kind(decision_from_record(decision).text) == checkers.CODE
        if not is_code[key]:
            return False
        arb = state.arbiters.get(key) or (self._rebuild(log) if log is not None
                                          else arbiter.step(self._blank(), decision_from_record(decision))[0])
        return arbiter.rejection(arb, response_from_record(record)) is None

    def prefetch(self, state: ScorerState, events: Iterable[Event]) -> None:
        """Run the code of these events' awaited code answers concurrently, ahead of stepping them, so each
        step's scoring finds its check done (cached) instead of running them one after another."""
        answers = self.code_answers(state, events)
        if answers:
            checkers.run_many(answers, workers=self.code_workers, limits=self.limits)
