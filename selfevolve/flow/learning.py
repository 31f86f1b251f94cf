"""The routing history as a fold: delivered answers join it, feedback on them teaches it (the bandit rule)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.routing import learning
from selfevolve.routing.embed import DIM
from selfevolve.routing.history import History
from selfevolve.scoring.arbiter import Verdict
from selfevolve.wire.tenancy import DEFAULT_TENANT


@dataclass(frozen=True)
class Delivery:
    """What the history needs of one delivered answer (the payload of an internal "delivery" event): the
    query's embedding (float32, from its decision record), the arbiter's verdict, who asked, the event
    time of the response that completed it and where its query was read (a re-delivery has the same)."""

    vector: np.ndarray | None  # None: a decision written before v4; the host embeds the text again
    verdict: Verdict
    tenant: str = DEFAULT_TENANT
    ts_ms: int = 0
    source: str = ""


class HistoryFold:
    """delivery -> the query joins the history; feedback -> a called model's quality on it.

    The state is the History itself (a FAISS index), mutated in place and returned: copying it per event
    would cost more than the rest of serving. A step that raises has changed nothing: learning's rules
    check before they write. Feedback the rules refuse (unknown or undelivered query, a model not called,
    a quality outside [0, 1]) changes nothing and is not an error: who may send it is the host's check.
    """

    name = "history"
    consumes = ("delivery", "feedback")

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def initialize(self) -> History:
        return History(dim=self.dim)

    def step(self, state: History, event: Event) -> tuple[History, list[Out]]:
        if event.kind == "delivery":
            self.deliver(state, event.payload)
        elif event.kind == "feedback":
            self.learn(state, event.record)
        return state, []

    @staticmethod
    def deliver(state: History, delivery: Delivery) -> bool:
        """Add a delivered query; False when it was already there (a delivery redone keeps the first)."""
        if not isinstance(delivery, Delivery):
            raise ValidationError(f"a delivery event carries a Delivery, not {type(delivery).__name__}")
        fresh = state.get(delivery.verdict.query_id, delivery.tenant) is None
        learning.record_delivery(state, delivery.vector, delivery.verdict, delivery.tenant,
                                 ts_ms=delivery.ts_ms, source=delivery.source)
        return fresh

    @staticmethod
    def learn(state: History, record: dict) -> bool:
        """Apply one feedback record under the bandit rule; False when the rule refuses it."""
        return learning.apply_feedback(state, learning.feedback_of(record))
