"""A cached answer as a routing decision: no model is called, the scorer delivers the stored answer at once."""

from __future__ import annotations

from dataclasses import replace

from selfevolve.routing.answer_cache import Entry
from selfevolve.routing.policy import Decision

CACHED = "cached"  # the strategy of a decision answered from the cache (the paper's "cached" tier)


def cached(d: Decision, entry: Entry) -> Decision:
    """d made a reuse of entry's answer: the entry's model named, nothing to call or pay."""
    return replace(d, strategy=CACHED, models=(entry.model,), escalation=(), escalate_below=0.0, expected_cost=0.0,
                   max_cost=0.0, expected_total=0.0, costs={entry.model: 0.0},
                   estimates={entry.model: d.estimates.get(entry.model, 0.5)},
                   fallbacks={}, reason=f"the cached answer of {entry.query_id} (exact repeat, no verdict against it)")
