"""The answer cache as a fold: delivered answers fill it, verdicts below the bar evict them (history events)."""

from __future__ import annotations

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.flow.events import Event, Out
from selfevolve.routing import answer_cache
from selfevolve.routing.answer_cache import AnswerCache, Entry
from selfevolve.wire.tenancy import DEFAULT_TENANT


class AnswerCacheFold:
    """history (event=delivery) -> the answer is cached under its (tenant, normalised text), or, for an answer
    that came from the cache, its query is tied to the entry it got; history (event=feedback) -> a verdict
    below answer_cache_min_quality on the delivered model evicts the entry that query got.

    The state is the AnswerCache, changed in place (the router fold reads the same object, as it reads the
    routing history): every serve worker folds the same history topic, so every replica caches alike. The
    router only peeks (selfevolve/flow/router.py): routing changes no replica.
    """

    name = "answer_cache"
    consumes = ("history",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def initialize(self) -> AnswerCache:
        return answer_cache.from_settings(self.settings)

    def step(self, state: AnswerCache, event: Event) -> tuple[AnswerCache, list[Out]]:
        if event.kind != "history":
            return state, []
        r = event.record
        tenant = r.get("tenant") or DEFAULT_TENANT
        if r.get("event") == "delivery":
            key = answer_cache.cache_key(r.get("text", ""))
            if r.get("cached_from"):
                state.alias(tenant, r["query_id"], key, origin=r["cached_from"])
            elif r.get("winner"):  # a query no model answered has nothing to reuse
                cost = float(sum((r.get("costs") or {}).values()))
                state.put(tenant, key, Entry(r["query_id"], r["winner"], r.get("answer", ""),
                                             int(r.get("ts_ms") or 0), cost))
        elif r.get("event") == "feedback":
            state.feedback(tenant, r["query_id"], float(r.get("quality", 0.0)), model=r.get("model") or None)
        else:
            raise ValidationError(f"a history record's event is delivery or feedback, not {str(r.get('event'))[:40]!r}")
        return state, []
