"""The routing history as a fold: delivered answers join it, accepted verdicts teach it (the bandit rule)."""

from __future__ import annotations

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.routing import learning
from selfevolve.routing.embed import DIM
from selfevolve.routing.history import History
from selfevolve.wire.records import vector_of
from selfevolve.wire.tenancy import DEFAULT_TENANT

STAGE = "history"
EVENTS = ("delivery", "feedback")


class HistoryFold:
    """history (event=delivery) -> the query joins the history; history (event=feedback) -> a called model's
    quality on it. Every serve worker folds the one history topic in its one order, so replicas agree.

    The state is the History itself (a FAISS index), mutated in place and returned: copying it per event
    would cost more than the rest of serving. A step that raises has changed nothing: learning's rules
    check before they write. Feedback the rules refuse (unknown or undelivered query, a model not called,
    a quality outside [0, 1]) changes nothing and is not an error: who may send it was the feedback host's
    check (FeedbackFold's input).
    """

    name = "history"
    consumes = ("history",)

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def initialize(self) -> History:
        return History(dim=self.dim)

    def step(self, state: History, event: Event) -> tuple[History, list[Out]]:
        if event.kind != "history":
            return state, []
        record = event.record
        kind = record.get("event")
        if kind == "delivery":
            self.deliver(state, record)
        elif kind == "feedback":
            self.learn(state, record)
        else:
            raise ValidationError(f"a history record's event is one of {EVENTS}, not {str(kind)[:40]!r}")
        return state, []

    def deliver(self, state: History, record: dict) -> bool:
        """Add a delivered query; False when it was already there (a delivery redone keeps the first)."""
        vector = vector_of(record)
        if vector is None or vector.shape != (self.dim,):
            got = "none" if vector is None else f"{vector.shape[0]} floats"
            raise ValidationError(f"a delivery needs the query's {self.dim}-float vector, it carries {got}")
        tenant = record.get("tenant") or DEFAULT_TENANT
        fresh = state.get(record["query_id"], tenant) is None
        learning.record_delivered(state, vector, record["query_id"], tenant, record.get("strategy", ""),
                                  record.get("costs") or {}, record.get("winner"),
                                  ts_ms=int(record.get("ts_ms") or 0), source=record.get("source", ""))
        return fresh

    @staticmethod
    def learn(state: History, record: dict) -> bool:
        """Apply one verdict under the bandit rule; False when the rule refuses it."""
        return learning.apply_feedback(state, learning.feedback_of(record))
