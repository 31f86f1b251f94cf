"""Model pools for `selfevolve bench quality --pools`: each pool's λ curve, quality-target run and baselines.

A pool is a RouterBench-format directory restricted to some of its models (`--models`). Every run is the
shipped serve folds through the in-memory driver (quality.online); the target run adds the meta-learner fold,
whose quality-target controller moves λ on the strategy topic (selfevolve/flow/metalearner.py) from the
feedback on delivered answers and on audited supervisor calls, as a deployment with
SELFEVOLVE_QUALITY_TARGET set runs it. The meta-learner's θ tuning is held still there, as on the curve.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.baselines import baselines, knn_curve
from selfevolve.flow import dataflow, driver
from selfevolve.flow.metalearner import MetaLearnerFold
from selfevolve.flow.workload import outcomes
from selfevolve.routing import target as qt

RB = "../shared/data/routerbench-0shot"
GSM8K = ".cache/data/routellm-gsm8k"
# name -> (data directory, models or None for all): the 11-model mix and the two-model pools of issue #15.
POOLS = {
    "routerbench-11": (RB, None),
    "routerbench gpt-4+mixtral": (RB, "gpt-4-1106-preview,mistralai/mixtral-8x7b-chat"),
    "routerbench gpt-4+yi-34b": (RB, "gpt-4-1106-preview,zero-one-ai/Yi-34B-Chat"),
    "gsm8k gpt-4+mixtral": (GSM8K, None),
}
LAMBDAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
TARGET = 0.95
FROZEN = 10**9  # metalearn_every in the target run: θ stays where the curve has it


def target_run(b, target: float, lam: float):
    """One pass with a quality target: serve folds plus the meta-learner. Returns (Run, outcomes, report)."""
    from bench.quality import summarize

    settings = b.settings.model_copy(update={"cost_lambda": lam, "quality_target": target,
                                             "metalearn_every": FROZEN})
    flow = dataflow.build(settings, b.catalogue, b.embed, roles=(dataflow.SERVE,), dim=b.dim)
    meta = MetaLearnerFold(settings, b.catalogue)
    d = driver.Driver(flow.folds + [meta], b.responder, states=dict(flow.states), prefix=settings.topic_prefix)
    result = driver.replay(d, b.workload.queries, b.workload.feedback, window=b.window)
    outs = outcomes(result, b.workload)
    state = result.states["metalearner"].target
    return summarize(outs), outs, qt.report(state)


def ratio_interval(outs, workload, seed: int, n: int = 2000) -> list[float]:
    """95% bootstrap interval of the measured ratio (accuracy / the supervisor's) over the test queries."""
    test = [o for o in outs if o.phase != "warmup"]
    mine = np.array([o.correct or 0.0 for o in test])
    sup = np.array([workload.gold.get(o.key, {}).get(workload.supervisor, 0.0) for o in test])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(test), (n, len(test)))
    r = mine[idx].sum(1) / np.maximum(sup[idx].sum(1), 1e-9)
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]


def cheapest(curve: list[dict], target: float) -> dict | None:
    """The cheapest curve point whose measured ratio reaches the target."""
    ok = [c for c in curve if (c["accuracy_vs_supervisor"] or 0.0) >= target]
    return min(ok, key=lambda c: c["cost_ratio"]) if ok else None


def target_entry(b, a, sup_usd: float, sup_acc: float, curve: list[dict], target: float = TARGET) -> dict:
    """The pool's "target" object: target, achieved (measured on test), the system's own 95% interval at the
    end, the measured ratio's bootstrap interval, cost, λ where it settled, audits, and the curve point it is
    compared with (goal: cost no more than 10% above the cheapest point reaching the target)."""
    run, outs, rep = target_run(b, target, a.lam)
    achieved = float(run.accuracy / sup_acc) if sup_acc else None
    best = cheapest(curve, target)
    cost = run.cost / sup_usd
    return {"target": target, "achieved": achieved, "interval": rep["interval"], "estimate": rep["achieved"],
            "achieved_interval": ratio_interval(outs, b.workload, a.seed), "cost_ratio": cost,
            "accuracy": run.accuracy, "cost_lambda": rep["cost_lambda"], "audits": rep["audits"],
            "audit_rate": b.settings.quality_audit_rate, "audit_start_rate": b.settings.audit_start_rate,
            "audit_calibration": b.settings.quality_audit_calibration, "audit_cost_usd": rep["audit_cost_usd"],
            "start_lambda": a.lam, "strategies": run.strategies,
            "cheapest_curve_point": best,
            "met": bool(achieved is not None and achieved >= target),
            "within_10pct": bool(best is not None and cost <= 1.1 * best["cost_ratio"])}


def pool(a, name: str, data: str, models: str | None, lambdas) -> dict:
    """One pool's entry: system (default λ), curve, target, baselines (and the kNN-with-cost curve)."""
    from bench.quality import _bench, _load, online
    from selfevolve.config import Settings

    sub = argparse.Namespace(**{**vars(a), "data": Path(data), "models": models, "supervisor": None})
    settings = Settings.load()
    ds, phased, train, test, names, supervisor = _load(sub)
    b = _bench(sub, settings, ds, phased, train, test, names, supervisor)
    sup_usd = sum(s.costs.get(supervisor, 0.0) for s in test)
    vec = b.vectors
    tv = np.stack([vec[s.prompt] for s in train]) if train else None
    xv = np.stack([vec[s.prompt] for s in test])
    base = baselines(train, test, names, supervisor, tv, xv, a.seed, a.lam, b.settings.knn_k)
    sup_acc = base["supervisor_only"][0]
    entry = {"data": data, "models": names, "supervisor": supervisor, "queries": len(test),
             "warmup_queries": len(train),
             "baselines": {k: {"accuracy": acc, "cost_ratio": usd / sup_usd} for k, (acc, usd) in base.items()},
             "knn_curve": [{"lambda": lam, "accuracy": acc, "cost_ratio": usd / sup_usd,
                            "accuracy_vs_supervisor": acc / sup_acc if sup_acc else None}
                           for lam, (acc, usd) in knn_curve(train, test, names, supervisor, tv, xv, lambdas,
                                                            b.settings.knn_k)]}
    entry["curve"] = []
    for lam in sorted(set(lambdas) | {a.lam}):
        r = online(b, lam)
        point = {"lambda": lam, "accuracy": r.accuracy, "cost_ratio": r.cost / sup_usd,
                 "accuracy_vs_supervisor": r.accuracy / sup_acc if sup_acc else None, "strategies": r.strategies}
        entry["curve"].append(point)
        if lam == a.lam:
            entry["system"] = {**point, "warmup_cost_ratio": r.warmup_cost / (sum(
                s.costs.get(supervisor, 0.0) for s in train) or 1.0)}
    entry["target"] = target_entry(b, a, sup_usd, sup_acc, entry["curve"], a.target)
    return entry


def headline_pool(a, b, result: dict, sup_usd: float, train, test) -> dict:
    """The 11-model mix's entry from the headline run (its curve and baselines) plus a target run."""
    sup_acc = result["baselines"]["supervisor_only"]["accuracy"]
    knn = knn_curve(train, test, result["models"], result["supervisor"],
                    np.stack([b.vectors[s.prompt] for s in train]) if train else None,
                    np.stack([b.vectors[s.prompt] for s in test]), a.pool_lambdas, b.settings.knn_k)
    s = result["system"]
    entry = {"data": result["data"], "models": result["models"], "supervisor": result["supervisor"],
             "queries": s["queries"], "warmup_queries": result["warmup"]["queries"],
             "system": {"lambda": result["lambda"], "accuracy": s["accuracy"], "cost_ratio": s["cost_ratio"],
                        "accuracy_vs_supervisor": s["accuracy_vs_supervisor"], "strategies": s["strategies"],
                        "warmup_cost_ratio": result["warmup"]["cost_ratio"]},
             "curve": result["curve"], "baselines": result["baselines"],
             "knn_curve": [{"lambda": lam, "accuracy": acc, "cost_ratio": usd / sup_usd,
                            "accuracy_vs_supervisor": acc / sup_acc if sup_acc else None} for lam, (acc, usd) in knn]}
    entry["target"] = target_entry(b, a, sup_usd, sup_acc, result["curve"], a.target)
    return entry


def _others(a) -> list[tuple[str, str, str | None]]:
    """The pools to run apart from the headline's (whose entry reuses its curve): those with data here."""
    out = []
    for name, (data, models) in POOLS.items():
        if not Path(data).is_dir():
            print(f"pool {name}: no data at {data}, skipped (`make data` converts the GSM8K set)")
            continue
        same = Path(data).resolve() == Path(a.data).resolve() and models == a.models
        out.append((name, data, None if same else models, same))
    return out


def start(a):
    """Submit the other pools to `a.jobs` worker processes (0: they run in finish(), one after another)."""
    if a.jobs <= 0:
        return None, {}
    from concurrent.futures import ProcessPoolExecutor

    pool_exec = ProcessPoolExecutor(max_workers=a.jobs)
    return pool_exec, {name: pool_exec.submit(pool, a, name, data, models, a.pool_lambdas)
                       for name, data, models, same in _others(a) if not same}


def finish(a, b, result: dict, sup_usd: float, started, train, test) -> dict:
    """Every pool's entry, in POOLS order: the headline's from its run, the others from their workers."""
    pool_exec, futures = started
    out = {}
    try:
        for name, data, models, same in _others(a):
            if same:
                out[name] = headline_pool(a, b, result, sup_usd, train, test)
            elif name in futures:
                out[name] = futures[name].result()
            else:
                out[name] = pool(a, name, data, models, a.pool_lambdas)
            t = out[name]["target"]
            print(f"pool {name}: target {t['target']} achieved {t['achieved']:.3f} at cost {t['cost_ratio']:.3f} "
                  f"(λ {t['cost_lambda']:.3g}, own estimate {t['estimate']:.3f} "
                  f"[{t['interval'][0]:.3f}, {t['interval'][1]:.3f}], {t['audits']} audits)", flush=True)
    finally:
        if pool_exec is not None:
            pool_exec.shutdown(cancel_futures=True)
    return out
