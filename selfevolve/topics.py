"""Topic names for every pipeline stage, derived from Settings (prefix configurable)."""

from __future__ import annotations

from dataclasses import dataclass

from selfevolve.config import Settings

# Logical stage -> the Avro kind (schemas/<kind>.avsc) its records carry.
STAGES: dict[str, str] = {
    "queries": "query",
    "route-decisions": "route_decision",
    "inference-requests": "inference_request",
    "inference-responses": "inference_response",
    "scores": "score",
    "answers": "answer",
    "feedback": "feedback",
    "dead-letter": "dead_letter",
    "model-events": "model_event",
    "gaps": "gap",
    "spawns": "spawn",
    "strategy": "strategy",
}


@dataclass(frozen=True)
class Topics:
    """Full topic names; inference requests are split per backend so workers take only theirs."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "Topics":
        return cls(settings.topic_prefix)

    def __getattr__(self, stage: str) -> str:
        name = stage.replace("_", "-")
        if name not in STAGES:
            raise AttributeError(stage)
        return f"{self.prefix}{name}"

    def requests_for(self, backend: str) -> str:
        return f"{self.prefix}inference-requests.{backend}"

    def kind_of(self, topic: str) -> str:
        """The Avro kind carried by a full topic name."""
        stage = topic[len(self.prefix):] if topic.startswith(self.prefix) else topic
        stage = stage.split(".", 1)[0]
        return STAGES[stage]

    def all(self, backends: tuple[str, ...] = ("replay", "openai", "local")) -> list[str]:
        names = [f"{self.prefix}{s}" for s in STAGES if s != "inference-requests"]
        return names + [self.requests_for(b) for b in backends]
