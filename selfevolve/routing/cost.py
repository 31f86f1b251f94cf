"""Cost accounting: expected cost of a call, per-query caps and per-tenant budgets."""

from __future__ import annotations

from dataclasses import dataclass, field


def call_cost(spec, prompt_tokens: int = 0, completion_tokens: int = 0) -> float:
    """USD of one call from a catalogue entry's prices (flat fee plus per-1k-token prices)."""
    return (float(getattr(spec, "cost_per_call", 0.0) or 0.0)
            + float(getattr(spec, "cost_per_1k_prompt", 0.0) or 0.0) * prompt_tokens / 1000
            + float(getattr(spec, "cost_per_1k_completion", 0.0) or 0.0) * completion_tokens / 1000)


def fit_budget(models: list[str], costs: dict[str, float], cap: float | None) -> list[str]:
    """Keep models in priority order while their summed expected cost stays within cap (at least one)."""
    if cap is None:
        return list(models)
    kept, spent = [], 0.0
    for m in models:
        if spent + costs[m] <= cap or not kept:
            kept.append(m)
            spent += costs[m]
    if spent > cap and kept:
        # Even the first choice is over the cap: the cheapest model is the only honest answer.
        kept = [min(models, key=lambda m: costs[m])]
    return kept


@dataclass
class TenantBudgets:
    """Running spend per tenant against an optional limit; the router reads remaining()."""

    limits: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def remaining(self, tenant: str) -> float | None:
        if tenant not in self.limits:
            return None
        return max(0.0, self.limits[tenant] - self.spent.get(tenant, 0.0))

    def charge(self, tenant: str, usd: float) -> None:
        self.spent[tenant] = self.spent.get(tenant, 0.0) + usd

    def with_limit(self, tenant: str, usd: float) -> TenantBudgets:
        return TenantBudgets({**self.limits, tenant: usd}, dict(self.spent))
