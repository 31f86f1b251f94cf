"""The feedback gate as a fold: a verdict its host let through becomes a history event every replica learns."""

from __future__ import annotations

from selfevolve.flow.events import Event, Out
from selfevolve.flow.learning import STAGE
from selfevolve.wire.records import history_feedback
from selfevolve.wire.tenancy import record_key


class FeedbackFold:
    """feedback -> history (event=feedback), keyed by its query. Stateless: who may give a verdict (a tenant
    about its own answers) is the host's check, made before the step (streams/feedback.py); the history
    fold's bandit rule ignores a verdict about a model that was not called."""

    name = "feedback"
    consumes = ("feedback",)

    def initialize(self) -> None:
        return None

    def step(self, state: None, event: Event) -> tuple[None, list[Out]]:
        if event.kind != "feedback":
            return state, []
        return state, [Out("history", history_feedback(event.record), record_key(event.record), STAGE)]
