"""Meta-learning of the routing thresholds θh/θl from per-strategy quality and cost (Algorithm 5.3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from selfevolve.errors import ValidationError

STRATEGIES = ("targeted", "hybrid", "parallel")

# One row per (strategy, domain) since {since_ms}. Quality is the feedback verdict on the answering
# model where one arrived, else the scorer's composite; cost is what the answer cost in all.
# The LEFT JOIN fills unmatched rows with defaults (empty query_id), hence the test on f.query_id.
STRATEGY_SQL = """
SELECT a.strategy AS strategy,
       a.domain AS domain,
       count() AS n,
       avg(if(f.query_id = '', a.composite, f.quality)) AS quality,
       avg(a.cost_usd) AS cost
FROM selfevolve.answers AS a FINAL
LEFT JOIN
(
    SELECT tenant, query_id, model, avg(quality) AS quality
    FROM selfevolve.feedback FINAL
    GROUP BY tenant, query_id, model
) AS f ON a.tenant = f.tenant AND a.query_id = f.query_id AND a.model = f.model
WHERE a.ts_ms >= {since_ms:Int64}
GROUP BY strategy, domain
ORDER BY domain, strategy
""".strip()


def pool(rows: Iterable[Mapping], domain: int = -1) -> dict[str, dict]:
    """n-weighted quality and cost per strategy, for one domain or (domain=-1) over all of them."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        if domain != -1 and int(r["domain"]) != domain:
            continue
        s = str(r["strategy"])
        n = int(r["n"])
        a = acc.setdefault(s, [0, 0.0, 0.0])
        a[0] += n
        a[1] += n * float(r["quality"])
        a[2] += n * float(r["cost"])
    return {s: {"n": n, "quality": q / n, "cost": c / n} for s, (n, q, c) in sorted(acc.items()) if n > 0}


def utilities(pooled: Mapping[str, Mapping], lam: float, normalize_cost: bool = True,
              cost_scale: float | None = None) -> dict[str, float]:
    """quality − λ·cost per strategy.

    Costs are USD per query (1e-4..1e-2) while quality lies in [0, 1]; dividing by cost_scale (the
    router's reference, the supervisor's price) or else by the dearest strategy's cost puts both on
    one scale, so λ trades them off instead of cost vanishing.
    """
    top = max((p["cost"] for p in pooled.values()), default=0.0)
    scale = top if normalize_cost and top > 0 else 1.0
    if normalize_cost and cost_scale:
        scale = cost_scale
    return {s: p["quality"] - lam * p["cost"] / scale for s, p in pooled.items()}


def nudge(best: str, theta_high: float, theta_low: float, delta: float,
          min_gap: float = 0.05) -> tuple[float, float]:
    """Move θh/θl by δ toward sending more traffic to the best strategy.

    Confidence ≥ θh routes targeted, below θl parallel, between them hybrid. So targeted winning
    lowers θh, parallel winning raises θl, and hybrid winning widens the band between them.
    """
    if best not in STRATEGIES:
        raise ValidationError(f"unknown strategy {best!r}")
    hi, lo = theta_high, theta_low
    if best == "targeted":
        hi -= delta
    elif best == "parallel":
        lo += delta
    else:
        hi += delta
        lo -= delta
    hi = min(1.0, max(min_gap, hi))
    lo = min(hi - min_gap, max(0.0, lo))
    return round(hi, 10), round(lo, 10)


def tune(rows: Iterable[Mapping], theta_high: float, theta_low: float, *, lam: float = 1.0,
         delta: float = 0.02, min_n: int = 20, domain: int = -1, ts_ms: int = 0,
         normalize_cost: bool = True, cost_scale: float | None = None) -> dict:
    """One step of Algorithm 5.3 over STRATEGY_SQL rows; returns a Strategy record.

    Strategies with fewer than min_n answers are ignored: a handful of lucky answers should not move
    the thresholds for everyone. With fewer than two strategies left there is nothing to compare, and
    the thresholds are returned unchanged; otherwise a strategy that starves the others of traffic
    would win every later round by default and drive θh/θl to the bounds.
    """
    if not 0.0 <= theta_low < theta_high <= 1.0:
        raise ValidationError(f"need 0 <= θl < θh <= 1, got θl={theta_low} θh={theta_high}")
    pooled = {s: p for s, p in pool(rows, domain).items() if p["n"] >= min_n and s in STRATEGIES}
    util = utilities(pooled, lam, normalize_cost, cost_scale)
    hi, lo = theta_high, theta_low
    if len(util) >= 2:
        best = min(util, key=lambda s: (-util[s], STRATEGIES.index(s)))
        hi, lo = nudge(best, theta_high, theta_low, delta)
        detail = " ".join(f"{s}={u:.4f}(n={pooled[s]['n']})" for s, u in util.items())
        reason = f"best={best} {detail}"
    else:
        reason = f"hold: fewer than two strategies with n>={min_n}"
    return {"version": 1, "theta_high": hi, "theta_low": lo, "domain": int(domain),
            "reason": reason, "ts_ms": int(ts_ms)}
