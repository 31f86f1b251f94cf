"""The in-memory driver: the folds over a list of events, no broker, in the order the topics would deliver.

Like quix-streams' `sdf.test()`. One FIFO of events stands for every topic: the driver takes the oldest,
hands it to each fold that consumes its kind (in the order the folds were given), and appends what they
output to the end. Two kinds of output are handled on the spot rather than queued:

- `inference_request`: answered at once by `responder(request) -> inference_response record` (a pure
  function: the recorded answers of a replay), whose response is queued like any other event;
- an Out for a tenant's own topic (`answers.<tenant>`): kept in `Result.log` only; the shared topic's copy is
  the one folds read and the history stores.

A step that raises changes nothing (the fold contract) and becomes a dead-letter record
(selfevolve/wire/deadletter.py) with the event's position; the run goes on. Positions are deterministic: each
topic is one partition whose offsets count the records sent to it, and a dead letter's time is its event's
ts_ms (event time), so two runs over the same inputs give the same records, byte for byte.

The replay protocol (`replay`): windows of W queries. Send the window, run to quiescence; then post the gold
verdicts `feedback(answer)` gives for each answer of the window (only now, after delivery: nothing else ever
reads gold), run to quiescence; next window.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from selfevolve.errors import SelfEvolveError
from selfevolve.flow.events import KINDS, Event, Out
from selfevolve.wire.deadletter import dead_letter
from selfevolve.wire.tenancy import record_key
from selfevolve.wire.topics import TENANT_STAGES

Responder = Callable[[dict], dict]
Verdicts = Callable[[dict], list[dict]]  # an answer record -> the feedback records gold says about it


class Fold(Protocol):
    name: str
    consumes: tuple[str, ...]

    def initialize(self) -> Any: ...

    def step(self, state: Any, event: Event) -> tuple[Any, list[Out]]: ...


class DriverError(SelfEvolveError):
    """The folds did not come to rest (an output loop), or an input is not an event kind."""


def _json(kind: str, record: dict) -> bytes:
    """Default dead-letter payload: the record as canonical JSON (the broker would hold its Avro bytes)."""
    return json.dumps(record, sort_keys=True, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)).encode()


@dataclass
class Result:
    """What a run put on each topic, in order, and where the folds ended."""

    records: dict[str, list[dict]] = field(default_factory=dict)  # kind -> records on its shared topic(s)
    log: list[Out] = field(default_factory=list)  # every record sent, inputs included, with its stage and key
    states: dict[str, Any] = field(default_factory=dict)  # fold name -> final state

    def of(self, kind: str) -> list[dict]:
        return self.records.get(kind, [])

    @property
    def deliveries(self) -> list[Out]:
        """The history Outs of delivered answers, in the order they were sent (each with the scorer's Verdict
        as its payload, which only the in-memory run keeps: the topic carries the record)."""
        return [o for o in self.log if o.kind == "history" and o.record.get("event") == "delivery"]

    @property
    def dead_letters(self) -> list[dict]:
        return self.of("dead_letter")


class Driver:
    """Folds and their states, one FIFO, and the records sent so far. `send` then `run` (to quiescence)."""

    def __init__(self, folds: Sequence[Fold], responder: Responder | None = None, *,
                 states: dict[str, Any] | None = None, prefix: str = "selfevolve.",
                 encode: Callable[[str, dict], bytes] = _json, max_events: int = 10_000_000) -> None:
        names = [f.name for f in folds]
        if len(set(names)) != len(names):
            raise DriverError(f"two folds share a name: {names}")
        self.folds = list(folds)
        self.responder, self.prefix, self.encode, self.max_events = responder, prefix, encode, max_events
        given = states or {}
        self.states = {f.name: given[f.name] if f.name in given else f.initialize() for f in folds}
        self.queue: deque[Event] = deque()
        self.offsets: dict[str, int] = {}
        self.result = Result(states=self.states)
        self.handled = 0
        self._prefetched: set[int] = set()  # ids of queued events a fold's prefetch has already seen

    def consumers(self, kind: str) -> list[Fold]:
        return [f for f in self.folds if kind in f.consumes]

    def send(self, kind: str, record: dict, key: str | None = None, stage: str | None = None) -> None:
        """Put one input record on its topic (the shared topic of `kind` unless `stage` says otherwise)."""
        if kind not in KINDS:
            raise DriverError(f"{kind!r} is not an event kind (one of {sorted(KINDS)})")
        if key is None and "query_id" in record:
            key = record_key(record)  # as produce keys queries and verdicts: one query, one partition
        self._put(Out(kind, record, key, stage or KINDS[kind]))

    def _put(self, out: Out) -> None:
        """Record one Out on its topic and queue it for the folds."""
        self.result.log.append(out)
        topic = self.prefix + (out.stage or KINDS[out.kind])
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        base, _, tenant = (out.stage or "").partition(".")
        if tenant and base in TENANT_STAGES:
            return  # a tenant's own copy: folds read, and the history stores, the shared topic's
        self.result.records.setdefault(out.kind, []).append(out.record)
        event = Event(out.kind, out.record, topic=topic, at=(0, offset))
        if out.kind == "inference_request" and self.responder is not None:
            self._respond(event, out)
        elif self.consumers(out.kind):
            self.queue.append(event)

    def _respond(self, event: Event, out: Out) -> None:
        try:
            response = self.responder(out.record)
        except Exception as e:  # noqa: BLE001 - a responder that fails is that request's dead letter
            self._dead_letter(event, e)
            return
        self._put(Out("inference_response", response, out.key, KINDS["inference_response"]))

    def _dead_letter(self, event: Event, error: BaseException) -> None:
        partition, offset = event.at or (-1, -1)
        record = dead_letter(event.topic or event.kind, partition, offset, self.encode(event.kind, event.record),
                             error, int(event.record.get("ts_ms", 0)))
        self._put(Out("dead_letter", record, None, KINDS["dead_letter"]))

    def _step_all(self, event: Event) -> None:
        for fold in self.consumers(event.kind):
            self._step(fold, event)

    def _step(self, fold: Fold, event: Event) -> None:
        try:
            state, outs = fold.step(self.states[fold.name], event)
        except Exception as e:  # noqa: BLE001 - a step that raises changed nothing: dead-letter, go on
            self._dead_letter(event, e)
            return
        self.states[fold.name] = state
        for o in outs:
            self._put(o)

    def _batch(self) -> tuple[Fold, list[Event]] | None:
        """The run of same-kind events at the head when one fold alone reads them and can step a batch
        (`step_many`, equal by contract to stepping them one by one, but with one embedding call)."""
        kind = self.queue[0].kind
        readers = self.consumers(kind)
        if len(readers) != 1 or not hasattr(readers[0], "step_many"):
            return None
        run = []
        while self.queue and self.queue[0].kind == kind:
            run.append(self.queue.popleft())
            self._prefetched.discard(id(run[-1]))
        return readers[0], run

    def run(self) -> Result:
        """Deliver queued events until none is left (quiescence)."""
        while self.queue:
            batch = self._batch()
            if batch is None:
                self._prefetch()
                events = [self.queue.popleft()]
                self._prefetched.discard(id(events[0]))
                self._step_all(events[0])
            else:
                fold, events = batch
                self._step_batch(fold, events)
            self.handled += len(events)
            if self.handled > self.max_events:
                raise DriverError(f"more than {self.max_events} events without coming to rest: an output loop?")
        return self.result

    def _prefetch(self) -> None:
        """Let a fold with `prefetch(state, events)` (the scorer: run the answers' code checks concurrently)
        see the run of queued events it reads, once, before they are stepped one by one. Only a speed-up:
        the steps compute the same with or without it."""
        head = self.queue[0]
        if id(head) in self._prefetched:
            return
        for fold in self.consumers(head.kind):
            if not hasattr(fold, "prefetch"):
                continue
            run = []
            for e in self.queue:
                if e.kind not in fold.consumes:
                    break
                run.append(e)
            self._prefetched.update(id(e) for e in run)
            try:
                fold.prefetch(self.states[fold.name], run)
            except Exception:  # noqa: BLE001 - each step runs its own checks if this failed
                pass

    def _step_batch(self, fold: Fold, events: list[Event]) -> None:
        if len(events) > 1:
            try:
                state, outs = fold.step_many(self.states[fold.name], events)
            except Exception:  # noqa: BLE001 - find the event(s) that failed, one at a time
                pass
            else:
                self.states[fold.name] = state
                for o in outs:
                    self._put(o)
                return
        for e in events:
            self._step(fold, e)


def run(folds: Sequence[Fold], inputs: Iterable[tuple[str, dict]], responder: Responder | None = None,
        **kw: Any) -> Result:
    """Send every (kind, record) input, then run to quiescence."""
    driver = Driver(folds, responder, **kw)
    for kind, record in inputs:
        driver.send(kind, record)
    return driver.run()


def replay(driver: Driver, queries: Sequence[dict], feedback: Verdicts | None, *, window: int = 50,
           on_window: Callable[[int, Result], None] | None = None) -> Result:
    """The replay protocol on `driver`: windows of `window` query records, each run to quiescence, then the
    gold verdicts `feedback(answer)` gives for each of the window's answers (None: no feedback), run to
    quiescence. `on_window(queries sent, result)` after each window."""
    if window < 1:
        raise DriverError(f"window must be at least 1, got {window}")
    for lo in range(0, len(queries), window):
        seen = len(driver.result.of("answer"))
        for q in queries[lo:lo + window]:
            driver.send("query", q)
        driver.run()
        if feedback is not None:
            for answer in driver.result.of("answer")[seen:]:
                for fb in feedback(answer):
                    driver.send("feedback", fb)
            driver.run()
        if on_window is not None:
            on_window(min(lo + window, len(queries)), driver.result)
    return driver.result
