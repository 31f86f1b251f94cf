"""Scorer host: decode decisions and responses, step the scorer fold, send its outputs, persist its state.

The scorer reads `route-decisions` and `inference-responses` with its own aiokafka consumer (group
`<prefix>scorer`); its logic is the pure fold selfevolve/flow/scorer.py, one ScorerState per input
partition, persisted per query key in a compacted changelog (streams/changelog.py), as the router and the
sink read with their own consumers (Faust's consumer skipped events after a SIGKILL with a backlog). What
one poll returns is one batch, in one Kafka transaction:

1. every event steps the fold (off the loop: scoring may run a response's code, and the batch's code
   answers run concurrently first); the entries each step changed are staged for the changelog;
2. the outputs (requests, scores, answers, and the deliveries every serve worker's routing history folds
   from the history topic) are sent, and the broker's acknowledgements awaited;
3. the staged entries are written to the changelog, and awaited;
4. the batch's offsets are sent to the transaction, which commits.

A crash anywhere aborts the transaction: read_committed readers never see its outputs, the restarted
scorer rebuilds its states from the committed changelog and folds the batch again, so each query is
answered once. Without a transaction (the agent tests) the order of 2 and 3 still means a crash can only
repeat outputs, never lose them: the changelog says an event was seen only once its outputs are on the broker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.flow.scorer import QueryLog, ScorerFold, ScorerState
from selfevolve.scoring import checkers
from selfevolve.wire.records import vector_bytes
from selfevolve.wire.tenancy import record_key
from streams.changelog import ChangelogTable
from streams.runtime import infrastructure, now_ms, oversized

log = logging.getLogger("selfevolve.scorer")
KINDS = ("route_decision", "inference_response")


@dataclass(frozen=True)
class Stepped:
    """One event's step that had outputs: its index in the batch and the outputs."""

    index: int
    outs: list[Out]


class Scorer:
    """The fold, one ScorerState per owned input partition (a query's events share its key's partition),
    and the changelog table that persists the states' entries by (partition, query key)."""

    def __init__(self, rt, serve) -> None:
        self.rt, self.serve = rt, serve
        s = rt.settings
        # The markers bound is the whole worker's, shared out over the partitions: each partition's state
        # keeps its share, so memory, restore time and what a partition remembers do not depend on which
        # worker owns which partitions.
        keep = max(1, s.scorer_done_keep // max(1, s.topic_partitions))
        self.fold = ScorerFold(s, serve.catalogue, serve.known, codec=rt.codec, done_keep=keep)
        self.table = ChangelogTable(s, "scorer-state")
        self.states: dict[int, ScorerState] = {}

    def apply(self, events: list[Event], on_error=None) -> list[Stepped]:
        """Step each event through its partition's state, in order, staging the changelog writes of what it
        changed. Runs in a worker thread. An event that raises changes nothing: with on_error,
        `on_error(index, error)` is told and the batch goes on; without, the error propagates."""
        self._prefetch(events)
        stepped = []
        for i, event in enumerate(events):
            partition = event.at[0]
            state = self.states.get(partition) or self.fold.initialize()
            try:
                if event.kind == "inference_response":  # the answer's latency is up to now (it decides nothing)
                    event = replace(event, payload={"now_ms": now_ms()})
                state, outs, changed = self.fold.step_logged(state, event)
            except Exception as e:  # noqa: BLE001 - one poison event must not stop the batch
                if on_error is None:
                    raise
                on_error(i, e)
                continue
            self.states[partition] = state
            for key in changed:
                entry = state.entry_json(key)
                self.table.put(partition, key, entry) if entry is not None else self.table.delete(partition, key)
            if outs:
                stepped.append(Stepped(i, outs))
        return stepped

    def _prefetch(self, events: list[Event]) -> None:
        """Run the code of the batch's awaited code answers concurrently, in one call for all partitions."""
        try:
            answers = []
            for p in {e.at[0] for e in events}:
                state = self.states.get(p) or self.fold.initialize()
                answers += self.fold.code_answers(state, [e for e in events if e.at[0] == p])
            if answers:
                checkers.run_many(answers, workers=self.rt.settings.code_check_workers, limits=self.fold.limits)
        except Exception:  # noqa: BLE001 - only a speed-up: each answer's scoring runs its check itself
            log.exception("the batch's code checks failed; scoring checks each answer on its own")

    def load(self, partition: int, entries: dict) -> None:
        """Take a partition's state from its changelog entries (in changelog order)."""
        self.states[partition] = ScorerState.from_json(entries)

    def drop(self, partitions: set[int]) -> None:
        self.table.drop(partitions)
        for p in partitions:
            self.states.pop(p, None)

    async def restore(self, partitions: set[int]) -> None:
        self.drop(partitions)  # what this worker held of them before is stale: another may have moved on
        await self.table.restore(partitions)
        for p in partitions:
            self.load(p, self.table.take(p))


async def score_batch(rt, scorer: Scorer, messages) -> None:
    """Steps 1-3 above for raw messages; returns once their outputs and the changelog are acknowledged."""
    acks, events, sources = [], [], []
    for msg in messages:
        # One merged stream of two kinds: the writer schema says which (a foreign one fails decode).
        kind = rt.codec.kind_of(msg.value)
        kind = kind if kind in KINDS else "inference_response"
        try:
            too_big = oversized(msg.value, rt.settings.max_record_bytes)  # before decoding, as the router does
            if too_big is not None:
                raise too_big
            events.append(Event(kind, rt.codec.decode(kind, msg.value), msg.topic, (msg.partition, msg.offset)))
            sources.append(msg)
        except Exception as e:  # noqa: BLE001 - whatever one record does wrong is that record's dead letter
            acks.append(await rt.send_dead_letter(msg, e))
    failed: list[tuple[int, BaseException]] = []
    stepped = await asyncio.to_thread(scorer.apply, events, lambda i, e: failed.append((i, e))) if events else []
    for i, e in failed:  # e.g. a decision whose plan is not a Decision: nothing of it was kept
        log.warning("dead-lettering %s at %s/%s: %s", events[i].kind, sources[i].partition, sources[i].offset, e)
        acks.append(await rt.send_dead_letter(sources[i], e))
    stepped = await _embed_lost(scorer.serve, stepped)
    for s in stepped:
        for out in s.outs:
            acks.append(await rt.send_out(out))
    for ack in acks:
        await ack
    # Only now, with every output on the broker, may the changelog say these events were seen. Only this
    # batch's partitions: another task's batch may be staging its own at the same time.
    await scorer.table.flush(rt.send_raw, {msg.partition for msg in messages})


async def _embed_lost(serve, stepped: list[Stepped]) -> list[Stepped]:
    """Deliveries whose decision carried no vector (written before v4) get their query embedded again from
    the text the delivery carries, rather than the query forgotten by every history replica."""
    lost = [o for s in stepped for o in s.outs if o.kind == "history" and o.record.get("vector") is None]
    if not lost:
        return stepped
    try:
        vectors = await asyncio.to_thread(serve.embedder.encode, [o.record["text"] for o in lost])
    except Exception as e:  # noqa: BLE001 - raising would abort the batch's answers too, again at each retry
        if infrastructure(e):
            raise
        # Sent without a vector: every replica skips them alike (streams/history_follow.py); the answers go out.
        log.exception("re-embedding %d answered queries failed; they will miss the routing history", len(lost))
        return stepped
    fixed = {id(o): replace(o, record={**o.record, "vector": vector_bytes(v)}) for o, v in zip(lost, vectors)}
    return [replace(s, outs=[fixed.get(id(o), o) for o in s.outs]) for s in stepped]


async def run_scorer(rt, stop: asyncio.Event | None = None) -> None:
    """Consume decisions and responses until cancelled (or `stop` is set): a batch per poll, each batch's
    outputs, changelog writes and consumed offsets in one Kafka transaction."""
    from streams.kafka_io import by_partition, ensure_topics, transactional_loop

    serve = await rt.replicated()  # its reuse checks read the history replica
    scorer = Scorer(rt, serve)
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

    # A query's decision and responses share its key's partition number: one task, range-assigned.
    await transactional_loop(rt.settings, "scorer", [rt.topics.route_decisions, rt.topics.inference_responses],
                             rt.settings.scorer_batch_size, handle, stop, on_assign=on_assign, task_of=by_partition)


def register(app, rt) -> None:
    @app.task
    async def scorer():
        await run_scorer(rt)
