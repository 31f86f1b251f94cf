"""A pinned model replaces the routed plan with one call to it; an unknown name keeps the routed plan."""

from __future__ import annotations

from dataclasses import replace

from selfevolve.config import Settings
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.pinning import PINNED, pin
from selfevolve.routing.policy import Decision

CATALOGUE = Catalogue.load(Settings().catalogue)


def _decision() -> Decision:
    names = CATALOGUE.names
    return Decision("q", "acme", "text", "hybrid", 0.5, (names[0],), ((names[1],),), 0.7, 0.1, 0.3, None,
                    {names[0]: 0.6}, {names[0]: 0.1}, CATALOGUE.fallbacks(), "routed", 0.8, 0.4, 1.0, 0.2)


def test_no_pin_keeps_the_routed_plan():
    d = _decision()
    assert pin(d, {}, CATALOGUE) is d and pin(d, None, CATALOGUE) is d


def test_a_pin_is_one_call_to_that_model_with_fallbacks_kept():
    d, model = _decision(), CATALOGUE.names[-1]
    p = pin(d, {"pin_model": model}, CATALOGUE)
    assert (p.strategy, p.models, p.escalation, p.escalate_below) == (PINNED, (model,), (), 0.0)
    assert p.fallbacks == d.fallbacks and set(p.costs) == {model} and p.max_cost == p.expected_cost
    assert replace(p, strategy=d.strategy, models=d.models) != d  # the plan changed, the identity did not
    assert (p.query_id, p.tenant, p.text) == (d.query_id, d.tenant, d.text)


def test_an_unknown_pin_keeps_the_routed_plan_and_says_so():
    p = pin(_decision(), {"pin_model": "gpt-9"}, CATALOGUE)
    assert p.strategy == "hybrid" and "gpt-9" in p.reason
