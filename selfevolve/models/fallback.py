"""Fallback chains: when a model fails, climb the price tiers until the supervisor answers."""

from __future__ import annotations

from selfevolve.models.catalogue import Catalogue, ModelSpec, Role


def fallback_chain(catalogue: Catalogue, model_name: str) -> list[str]:
    """model_name, then the cheapest active model of each next tier up, ending with the supervisor.

    The chain stops at the first supervisor it meets; if it runs out of tiers without one, the cheapest
    active supervisor (if any) is appended so every chain ends with the last word of the hierarchy.
    """
    chain = [model_name]
    spec = catalogue.get(model_name)

    def is_supervisor(s: ModelSpec) -> bool:
        return s.role == Role.SUPERVISOR and not s.reserve  # the reserve pool holds no role yet

    while not is_supervisor(spec):
        nxt = catalogue.next_tier(spec.name)
        if nxt is None:
            break
        chain.append(nxt.name)
        spec = nxt
    if not is_supervisor(spec):
        supervisors = sorted(catalogue.by_role(Role.SUPERVISOR), key=lambda s: (s.tier, s.name))
        if supervisors and supervisors[-1].name not in chain:
            chain.append(supervisors[-1].name)
    return chain
