"""Meta-learner host: the meta-learner fold, fed by the ClickHouse sink, restored from the store at start-up.

It runs in the sink task (streams/sink.py) because the sink is the one reader of both answers and every
feedback topic (queries.<T> and feedback.<T> included, by pattern), and its commits follow the store: what
the sink has committed is stored, so the last `metalearn_window` answers in the store (with their latest
verdicts) plus what the sink reads after its committed offsets is exactly what the fold saw before a
restart. The store is then the fold's changelog, and no second consumer has to agree with the sink on what
was read. Strategy events (its own read back, and anyone else's) reach it through rt.followers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event
from selfevolve.flow.metalearner import Answered, MetaLearnerFold, MetaLearnerState
from selfevolve.models.catalogue import Catalogue
from streams.runtime import infrastructure

log = logging.getLogger("selfevolve.metalearner")
KINDS = ("answer", "feedback")  # what the sink hands over; strategy events come through the followers

# The last {window} answers, oldest first, each with the latest verdict on its answering model (the feedback
# table keeps one verdict per (tenant, query, model): the latest). The LEFT JOIN fills unmatched rows with
# defaults (empty query_id), hence the test on f.query_id.
WINDOW_SQL = """
SELECT a.tenant, a.query_id, a.model, a.strategy, a.domain, a.composite, a.cost_usd,
       f.query_id != '' AS judged, f.quality
FROM
(
    SELECT tenant, query_id, model, strategy, domain, composite, cost_usd, ts_ms
    FROM selfevolve.answers FINAL
    ORDER BY ts_ms DESC, tenant DESC, query_id DESC
    LIMIT {window}
) AS a
LEFT JOIN
(
    SELECT tenant, query_id, model, quality FROM selfevolve.feedback FINAL
) AS f ON a.tenant = f.tenant AND a.query_id = f.query_id AND a.model = f.model
ORDER BY a.ts_ms, a.tenant, a.query_id
""".strip()
THETA_SQL = ("SELECT theta_high, theta_low FROM selfevolve.strategies FINAL WHERE domain = -1 "
             "ORDER BY ts_ms DESC LIMIT 1")


@dataclass(frozen=True)
class Stored:
    """The meta-learner's state as the history store holds it."""

    answers: int
    window: tuple[Answered, ...]
    theta: tuple[float, float] | None


class MetaLearnerHost:
    """The fold and its state in the history role; the sink calls `feed` after each stored batch."""

    def __init__(self, fold: MetaLearnerFold) -> None:
        self.fold = fold
        self.state: MetaLearnerState = fold.initialize()
        self.followed = False  # a strategy event came from the topic: newer than any the store holds

    @classmethod
    def attach(cls, rt) -> MetaLearnerHost:
        """A host for this runtime, following its strategy events."""
        host = cls(MetaLearnerFold(rt.settings, Catalogue.load(rt.settings.catalogue)))
        rt.followers.append(host.follow)
        return host

    def follow(self, event: Event) -> None:
        """A follower (rt.followers): every strategy event of the topic, this worker's own included."""
        if event.kind == "strategy":
            self.state, _ = self.fold.step(self.state, event)
            self.followed = True

    def read(self, store) -> Stored:
        """What the store holds of the fold's state when the sink last committed (blocking: run it in a
        thread): answers counted, the last window with its verdicts, the last global thresholds."""
        _, counted = store.query("SELECT count() FROM selfevolve.answers FINAL")
        _, rows = store.query(WINDOW_SQL.replace("{window}", str(int(self.fold.settings.metalearn_window))))
        window = tuple(Answered(str(t), str(q), str(m), str(s), int(d), float(c), float(usd),
                                float(quality) if judged else None)
                       for t, q, m, s, d, c, usd, judged, quality in rows)
        _, theta = store.query(THETA_SQL)
        return Stored(int(counted[0][0]), window, (float(theta[0][0]), float(theta[0][1])) if theta else None)

    def restore(self, stored: Stored) -> None:
        """Start from what the store held (on the event loop, where the followers run too). Its thresholds
        only if the strategy topic has not told any yet: the topic is never behind the store."""
        state = replace(self.state, answers=stored.answers, window=stored.window)
        if stored.theta is not None and not self.followed:
            high, low = stored.theta
            try:
                state, _ = self.fold.step(state, Event("strategy", {"theta_high": high, "theta_low": low,
                                                                    "domain": -1}))
            except ValidationError as e:
                log.warning("stored thresholds ignored: %s", e)
        self.state = state
        log.info("meta-learner restored: %d answers counted, %d in the window, θh=%.3f θl=%.3f",
                 state.answers, len(state.window), state.theta_high, state.theta_low)

    async def feed(self, rt, items) -> None:
        """Step the fold over one stored batch's (message, kind, record) items in the order read; returns once
        its strategy events and dead letters are acknowledged (before the sink commits the batch)."""
        acks = []
        for msg, kind, record in items:
            if kind not in KINDS:
                continue
            try:
                self.state, outs = self.fold.step(self.state, Event(kind, record, msg.topic,
                                                                    (msg.partition, msg.offset)))
                acks += [await rt.send_out(o) for o in outs]
            except Exception as e:  # noqa: BLE001 - a step that raises changed nothing: dead-letter, go on
                if infrastructure(e):
                    raise
                log.warning("meta-learner refused %s at %s:%s: %s", kind, msg.topic, msg.offset, e)
                acks.append(await rt.send_dead_letter(msg, e))
        for ack in acks:
            await ack

