"""A client's pinned model: the routed plan replaced by one call to the model it named (query metadata)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from selfevolve.flow.responders import estimate_tokens
from selfevolve.models.catalogue import Catalogue, estimate_cost
from selfevolve.routing.policy import Decision

PIN_KEY = "pin_model"  # what the gateway sets for a request whose `model` is a catalogue model
PINNED = "pinned"  # the strategy of such a decision: the meta-learner scores only its own strategies


def pin(d: Decision, metadata: Mapping[str, str] | None, catalogue: Catalogue) -> Decision:
    """d, or d made a single call to the pinned model when the query's metadata names one in the catalogue.

    The query still goes through routing (its domain, history and answer are recorded as any other), and a
    failed call still falls back to the next tier; only the choice of model is the client's. A name not in
    the catalogue (a model retired since the client looked) keeps the routed plan, and says so in its reason.
    """
    model = (metadata or {}).get(PIN_KEY)
    if not model:
        return d
    if model not in catalogue:
        return replace(d, reason=f"{d.reason}; pinned model {model!r} is not in the catalogue: routed instead")
    cost = d.costs.get(model)
    if cost is None:
        cost = estimate_cost(catalogue.get(model), estimate_tokens(d.text), 0)
    return replace(d, strategy=PINNED, models=(model,), escalation=(), escalate_below=0.0, expected_cost=cost,
                   max_cost=cost, expected_total=cost, costs={model: cost},
                   estimates={model: d.estimates.get(model, 0.5)}, reason=f"pinned by the client to {model}")
