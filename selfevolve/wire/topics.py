"""Topic names for every pipeline stage, derived from Settings (prefix configurable)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from selfevolve.config import Settings
from selfevolve.wire.tenancy import TENANT_RE, check_tenant

# Stages with one topic per tenant (P<stage>.<tenant>) next to the shared P<stage> (docs/tenancy: the
# tenant writes its queries and feedback and reads its answers there, under broker ACLs).
TENANT_STAGES = ("queries", "feedback", "answers")

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
    "history": "history",
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

    def queries_for(self, tenant: str) -> str:
        return f"{self.prefix}queries.{check_tenant(tenant)}"

    def feedback_for(self, tenant: str) -> str:
        return f"{self.prefix}feedback.{check_tenant(tenant)}"

    def answers_for(self, tenant: str) -> str:
        return f"{self.prefix}answers.{check_tenant(tenant)}"

    def tenant_topics(self, tenant: str) -> list[str]:
        return [self.queries_for(tenant), self.feedback_for(tenant), self.answers_for(tenant)]

    def tenant_of(self, topic: str) -> str | None:
        """T for P queries.T, P feedback.T and P answers.T; None for every other topic (the shared ones)."""
        if not topic.startswith(self.prefix):
            return None
        stage, dot, tenant = topic[len(self.prefix):].partition(".")
        if not dot or stage not in TENANT_STAGES or not TENANT_RE.fullmatch(tenant):
            return None
        return tenant

    def pattern(self, stage: str) -> str:
        """A regex matching the shared P<stage> and every P<stage>.<tenant> (a pattern subscription)."""
        if stage not in TENANT_STAGES:
            raise ValueError(f"{stage!r} has no per-tenant topics")
        return f"^{re.escape(self.prefix + stage)}(\\.{TENANT_RE.pattern[1:-1]})?$"

    def with_tenants(self, names: list[str], stages: tuple[str, ...] = ("queries", "feedback")) -> str:
        """A regex matching `names` and every tenant's topic of `stages` (what the history sink reads: a
        tenant's answers topic only repeats the shared one)."""
        tenant = TENANT_RE.pattern[1:-1]
        alts = [re.escape(n) for n in names] + [f"{re.escape(self.prefix + s)}\\.{tenant}" for s in stages]
        return f"^(?:{'|'.join(alts)})$"

    def kind_of(self, topic: str) -> str:
        """The Avro kind carried by a full topic name."""
        stage = topic[len(self.prefix):] if topic.startswith(self.prefix) else topic
        stage = stage.split(".", 1)[0]
        return STAGES[stage]

    def all(self, backends: tuple[str, ...] = ("replay", "openai", "local")) -> list[str]:
        names = [f"{self.prefix}{s}" for s in STAGES if s != "inference-requests"]
        return names + [self.requests_for(b) for b in backends]
