"""Per-tenant quality targets (`selfevolve bench tenant-targets`): one stream, tenants held to different targets.

The queries of one RouterBench-format pool are split between tenants by a hash of their id; each tenant's
target is set with `quality_targets`, as SELFEVOLVE_QUALITY_TARGETS sets it in a deployment. The shipped
serve folds and the meta-learner fold run through the in-memory driver: each tenant's quality is estimated
from its own feedback and audits, and its λ moves on the strategy topic (schema v3's `tenant`). Baseline in
the same command: the same stream at the start λ with no target. "achieved" is each tenant's accuracy on
its test queries over the supervisor's on the same queries, judged against gold after the fact; no
decision reads gold. Data: RouterBench (Hu et al., 2024).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from bench.quality_pools import RB, ratio_interval
from selfevolve.config import Settings
from selfevolve.flow import dataflow, driver
from selfevolve.flow.metalearner import MetaLearnerFold
from selfevolve.flow.workload import from_samples, outcomes
from selfevolve.routing import target as qt
from selfevolve.wire.tenancy import query_key

FROZEN = 10**9  # metalearn_every: θ stays put, so λ alone answers each target


def tenant_of(names: list[str]):
    """sample -> one of `names`, by a hash of its id (the same split on every run)."""
    def pick(sample) -> str:
        h = int.from_bytes(hashlib.sha256(sample.sample_id.encode()).digest()[:4], "big")
        return names[h % len(names)]
    return pick


def _run(b, settings: Settings):
    flow = dataflow.build(settings, b.catalogue, b.embed, roles=(dataflow.SERVE,), dim=b.dim)
    meta = MetaLearnerFold(settings, b.catalogue)
    d = driver.Driver(flow.folds + [meta], b.responder, states=dict(flow.states), prefix=settings.topic_prefix)
    result = driver.replay(d, b.workload.queries, b.workload.feedback, window=b.window)
    return outcomes(result, b.workload), result.states["metalearner"]


def per_tenant(b, outs, state, targets: dict[str, float], seed: int) -> dict[str, dict]:
    """Each tenant's test-half figures: measured ratio (and its bootstrap interval), cost ratio, and, with a
    target, the system's own estimate, its interval, λ where it settled and the audits it paid for."""
    out = {}
    for tenant, target in targets.items():
        mine = [o for o in outs if o.key.startswith(query_key(tenant, "")) and o.phase != "warmup"]
        sup = b.workload.supervisor
        right = sum(o.correct or 0.0 for o in mine)
        sup_right = sum(b.workload.gold.get(o.key, {}).get(sup, 0.0) for o in mine)
        sup_usd = sum(b.workload.supervisor_cost.get(o.key, 0.0) for o in mine)
        entry = {"queries": len(mine), "accuracy": right / max(len(mine), 1),
                 "achieved": right / sup_right if sup_right else None,
                 "achieved_interval": ratio_interval(mine, b.workload, seed),
                 "cost_ratio": sum(o.cost for o in mine) / sup_usd if sup_usd else None}
        t = state.tenant_targets.get(tenant)
        if t is not None:
            rep = qt.report(t)
            entry.update(target=target, estimate=rep["achieved"], interval=rep["interval"],
                         cost_lambda=rep["cost_lambda"], audits=rep["audits"], audit_cost_usd=rep["audit_cost_usd"],
                         met=bool(entry["achieved"] is not None and entry["achieved"] >= target))
        out[tenant] = entry
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve bench tenant-targets", description=__doc__)
    p.add_argument("--data", type=Path, default=Path(RB))
    p.add_argument("--models", default="gpt-4-1106-preview,mistralai/mixtral-8x7b-chat",
                   help="comma-separated sub-pool (default: GPT-4 with Mixtral)")
    p.add_argument("--targets", default="strict=0.98,lax=0.85", help="tenant=target,...")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="start λ (default: Settings.cost_lambda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/tenant_targets.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    from bench.quality import _bench, _load

    a = _parser().parse_args(argv)
    targets = {k.strip(): float(v) for k, v in (pair.split("=", 1) for pair in a.targets.split(",") if pair)}
    sub = argparse.Namespace(data=a.data, models=a.models, supervisor=None, seed=a.seed, no_warmup=False,
                             warmup=a.warmup, limit=a.limit, theta_high=None, theta_low=None, window=a.window)
    settings = Settings.load()
    lam = settings.cost_lambda if a.lam is None else a.lam
    ds, phased, train, test, names, supervisor = _load(sub)
    b = _bench(sub, settings, ds, phased, train, test, names, supervisor)
    b.workload = from_samples(str(a.data), phased, supervisor, tenant=tenant_of(sorted(targets)))
    t0 = time.time()
    base = b.settings.model_copy(update={"cost_lambda": lam, "metalearn_every": FROZEN, "quality_target": None})
    runs = {}
    for name, s in (("no_target", base), ("per_tenant", base.model_copy(update={"quality_targets": targets}))):
        outs, state = _run(b, s)
        runs[name] = per_tenant(b, outs, state, targets, a.seed)
        for tenant, e in runs[name].items():
            own = (f", target {e['target']:g}: own estimate {e['estimate']:.3f} [{e['interval'][0]:.3f}, "
                   f"{e['interval'][1]:.3f}], λ {e['cost_lambda']:.3g}, {e['audits']} audits") if "target" in e else ""
            print(f"{name:10} {tenant:7} {e['queries']} queries: {e['achieved']:.3f} of the supervisor's accuracy "
                  f"at {e['cost_ratio']:.3f} of its cost{own}", flush=True)
    result = {"workload": f"{a.data} restricted to {names}; test half split between tenants by a hash of the "
                          "sample id; one pass each, gold verdicts posted after delivery; data: RouterBench "
                          "(Hu et al., 2024)",
              "data": str(a.data), "models": names, "supervisor": supervisor, "start_lambda": lam,
              "audit_rate": settings.quality_audit_rate, "audit_start_rate": settings.audit_start_rate,
              "audit_calibration": settings.quality_audit_calibration, "targets": targets, "seed": a.seed,
              "warmup_queries": len(train), "test_queries": len(test), "runs": runs,
              "elapsed_s": time.time() - t0}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
