"""`selfevolve bench quality`: the shipped serve folds online on RouterBench-format data vs baselines (Table 1).

The router (with domains), the scorer (arbiter) and the routing history run through the in-memory driver
(selfevolve/flow/driver.py), as the stream runs them: the recorded answers are the model workers, and the
gold verdict on each model a delivered answer paid for is posted as feedback only after delivery. The
warm-up (the train split, streamed first) is paid for like any other traffic.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.baselines import baselines
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import ConfigError
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.flow.workload import Outcome, Workload, from_samples, outcomes, plan
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.routing.embed_cache import embed_all, lookup
from selfevolve.scoring.calibration import ece

CITATION = "RouterBench (Hu et al., 2024, 'RouterBench: A Benchmark for Multi-LLM Routing System')"
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0)
__all__ = ["CITATION", "catalogue_for", "embed_all", "main", "online", "Bench"]


def catalogue_for(train, test, models, supervisor: str) -> Catalogue:
    """All models active; the supervisor on top, the rest in three price bands (student, ta, teacher)."""
    fit = train or test  # prices are public, not gold: test costs are fair when there is no train split
    mean = {m: float(np.mean([s.costs.get(m, 0.0) for s in fit])) for m in models}
    rest = sorted((m for m in models if m != supervisor), key=lambda m: mean[m])
    roles = (Role.STUDENT, Role.TA, Role.TEACHER)
    specs = [ModelSpec(supervisor, "replay", Role.SUPERVISOR, 3, cost_per_call=mean[supervisor])]
    for i, m in enumerate(rest):
        band = min(2, i * 3 // max(1, len(rest)))
        specs.append(ModelSpec(m, "replay", roles[band], band, cost_per_call=mean[m]))
    return Catalogue(specs)


@dataclass
class Run:
    """Outcome of one online pass: warm-up then test stream."""

    accuracy: float
    cost: float
    warmup_cost: float
    warmup_queries: int
    queries: int
    strategies: dict
    escalation_rate: float
    ece_winner: float
    ece_models: float
    calls_per_query: float


@dataclass
class Bench:
    """What every pass shares: settings, catalogue, recorded answers, the stream and its vectors."""

    settings: Settings
    catalogue: Catalogue
    responder: object
    workload: Workload
    vectors: dict  # prompt text -> its embedding (what the router is given, and the kNN baselines)
    window: int = 1

    @property
    def embed(self):
        return lookup(list(self.vectors), np.stack(list(self.vectors.values())))

    @property
    def dim(self) -> int:
        return len(next(iter(self.vectors.values())))


def online(b: Bench, lam: float, **router_kw) -> Run:
    """One pass of the serve folds over warm-up then test, from an empty history, at cost weight λ."""
    settings = b.settings.model_copy(update={"cost_lambda": lam})
    flow = dataflow.build(settings, b.catalogue, b.embed, roles=(dataflow.SERVE,), dim=b.dim,
                          router_options=router_kw or None)
    result = driver.replay(flow.driver(b.responder), b.workload.queries, b.workload.feedback, window=b.window)
    if result.dead_letters:
        raise ConfigError(f"{len(result.dead_letters)} events were dead-lettered, first: "
                          f"{result.dead_letters[0]['reason']}")
    return summarize(outcomes(result, b.workload))


def summarize(outs: list[Outcome]) -> Run:
    warm = [o for o in outs if o.phase == "warmup"]
    test = [o for o in outs if o.phase != "warmup"]
    n = max(1, len(test))
    strat: dict[str, int] = {}
    conf_m, out_m = [], []
    for o in test:
        strat[o.strategy] = strat.get(o.strategy, 0) + 1
        for m, q in o.verdicts.items():
            conf_m.append(o.estimates.get(m, 0.5))
            out_m.append(q)
    right = [o.correct or 0.0 for o in test]  # judged against gold only after delivery
    return Run(sum(right) / n, sum(o.cost for o in test), sum(o.cost for o in warm), len(warm), len(test), strat,
               sum(o.stages > 1 for o in test) / n, ece([o.confidence for o in test], right), ece(conf_m, out_m),
               sum(len(o.models_called) for o in test) / n)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve bench quality", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="directory of <task>_<split>.csv files")
    p.add_argument("--models", default=None, help="comma-separated sub-pool of the data's models (A,B)")
    p.add_argument("--supervisor", default=None, help="model at the top (default: the priciest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="cost weight of the headline run (default: Settings.cost_lambda)")
    p.add_argument("--lambdas", type=float, nargs="*", default=list(LAMBDAS))
    p.add_argument("--theta-high", type=float, default=None, help="default: Settings.theta_high")
    p.add_argument("--theta-low", type=float, default=None, help="default: Settings.theta_low")
    p.add_argument("--window", type=int, default=1, help="queries sent before their answers' feedback is posted")
    p.add_argument("--quick", action="store_true", help="headline run only: no baselines, ablations or curve")
    p.add_argument("--no-warmup", action="store_true", help="skip replaying *_train.csv first")
    p.add_argument("--warmup", type=int, default=None, help="replay only the first N (shuffled) train rows")
    p.add_argument("--limit", type=int, default=None, help="stream only the first N (shuffled) test rows")
    p.add_argument("--pools", action="store_true",
                   help="also run each model pool of bench/quality_pools.py (curve, quality target, baselines)")
    p.add_argument("--pool-lambdas", type=float, nargs="*", default=None, help="the pools' λ curve")
    p.add_argument("--target", type=float, default=None, help="the pools' quality target (default 0.95)")
    p.add_argument("--jobs", type=int, default=0, help="worker processes for the other pools (0: in turn)")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    return p


def _load(a):
    """The data (restricted to --models), its supervisor and the shuffled warm-up and test samples."""
    ds = load_dir(a.data)
    if a.models:
        ds = ds.only([m.strip() for m in a.models.split(",") if m.strip()])
    ds.require_responses()
    phased = plan(ds, a.seed, 0 if a.no_warmup else a.warmup, a.limit)
    train = [s for p, s in phased if p == "warmup"]
    test = [s for p, s in phased if p == "test"]
    if not test:
        raise ConfigError(f"{a.data}: no *_test.csv rows to stream")
    models = list(ds.models)
    fit = ds.split("train").samples or test  # public prices, as the catalogue's
    supervisor = a.supervisor or max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in fit]))
    if supervisor not in models:
        raise ConfigError(f"supervisor {supervisor!r} is not among the data's models {models}")
    return ds, phased, train, test, models, supervisor


def _bench(a, settings: Settings, ds, phased, train, test, models, supervisor) -> Bench:
    prompts = [s.prompt for _, s in phased]
    vecs = embed_all(settings, prompts)
    catalogue = catalogue_for(list(ds.split("train").samples), test, models, supervisor)
    high = a.theta_high if a.theta_high is not None else settings.theta_high
    low = a.theta_low if a.theta_low is not None else settings.theta_low
    settings = settings.model_copy(update={"theta_high": high, "theta_low": low})
    return Bench(settings, catalogue, recorded(ds, catalogue), from_samples(str(a.data), phased, supervisor),
                 dict(zip(prompts, vecs)), a.window)


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    t0 = time.perf_counter()
    settings = Settings.load()
    a.lam = settings.cost_lambda if a.lam is None else a.lam
    ds, phased, train, test, models, supervisor = _load(a)
    b = _bench(a, settings, ds, phased, train, test, models, supervisor)
    sup_usd = sum(s.costs.get(supervisor, 0.0) for s in test)
    sup_train_usd = sum(s.costs.get(supervisor, 0.0) for s in train) or 1.0
    started = None
    if a.pools and not a.quick:
        from bench import quality_pools

        a.pool_lambdas = quality_pools.LAMBDAS if a.pool_lambdas is None else a.pool_lambdas
        a.target = quality_pools.TARGET if a.target is None else a.target
        started = quality_pools.start(a)  # the other pools run while the headline's does
    head = online(b, a.lam)
    result = {"data": str(a.data), "citation": CITATION, "supervisor": supervisor, "seed": a.seed, "lambda": a.lam,
              "theta_high": b.settings.theta_high, "theta_low": b.settings.theta_low,
              "knn_k": b.settings.knn_k, "window": a.window, "models": models,
              "system": {"accuracy": head.accuracy, "cost_ratio": head.cost / sup_usd, "queries": head.queries,
                         "cost_usd": head.cost, "strategies": head.strategies,
                         "escalation_rate": head.escalation_rate, "calls_per_query": head.calls_per_query,
                         "accuracy_vs_supervisor": None, "ece_winner_confidence": head.ece_winner,
                         "ece_model_confidence": head.ece_models},
              "warmup": {"queries": head.warmup_queries, "cost_usd": head.warmup_cost,
                         "cost_ratio": head.warmup_cost / sup_train_usd if train else 0.0}}
    if a.quick:
        s = result["system"]
        print(json.dumps({k: s[k] for k in ("accuracy", "cost_ratio", "strategies", "escalation_rate")}),
              f"{s['accuracy'] / (np.mean([x.correct.get(supervisor, 0.0) for x in test]) or 1):.1%} of supervisor",
              f"warm-up {result['warmup']['cost_ratio']:.3f}", f"{time.perf_counter() - t0:.1f}s")
        return 0
    _compare(a, b, result, head, train, test, models, supervisor, sup_usd, sup_train_usd)
    if started is not None:
        result["pools"] = quality_pools.finish(a, b, result, sup_usd, started, train, test)
    result["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    from bench.plotting import plot_quality

    plot_quality(result, a.out.with_suffix(".png"))
    _print(result)
    return 0


def _compare(a, b: Bench, result: dict, head: Run, train, test, models, supervisor, sup_usd, sup_train_usd) -> None:
    """Baselines, ablations and the λ curve into `result`."""
    vec = b.vectors
    base = baselines(train, test, models, supervisor, np.stack([vec[s.prompt] for s in train]) if train else None,
                     np.stack([vec[s.prompt] for s in test]), a.seed, a.lam, b.settings.knn_k)
    result["baselines"] = {k: {"accuracy": acc, "cost_ratio": usd / sup_usd} for k, (acc, usd) in base.items()}
    sup_acc = result["baselines"]["supervisor_only"]["accuracy"]
    result["system"]["accuracy_vs_supervisor"] = head.accuracy / sup_acc if sup_acc else None
    # no_predictor: the kNN Beta estimates over each model's global mean, without the online ridge predictor's
    # prior (issue 15's comparison); k_50: a wider neighbourhood than knn_k.
    for name, kw in {"no_similarity": dict(use_similarity=False), "no_cascade": dict(cascade=False),
                     "no_predictor": dict(use_predictor=False), "k_50": dict(k=50)}.items():
        r = online(b, a.lam, **kw)
        result["baselines"][f"ablation_{name}"] = {"accuracy": r.accuracy, "cost_ratio": r.cost / sup_usd}
    r0 = online(b, 0.0)
    result["baselines"]["ablation_no_cost_awareness"] = {"accuracy": r0.accuracy, "cost_ratio": r0.cost / sup_usd}
    result["curve"] = []
    for lam in a.lambdas:
        r = r0 if lam == 0.0 else head if lam == a.lam else online(b, lam)
        result["curve"].append({"lambda": lam, "accuracy": r.accuracy, "cost_ratio": r.cost / sup_usd,
                                "accuracy_vs_supervisor": r.accuracy / sup_acc if sup_acc else None,
                                "warmup_cost_ratio": r.warmup_cost / sup_train_usd if train else 0.0,
                                "strategies": r.strategies})


def _print(r: dict) -> None:
    print(f"quality bench on {r['data']} — data: {r['citation']}")
    s = r["system"]
    print(f"{'system (λ=%g)' % r['lambda']:34s} acc {s['accuracy']:.3f}  cost {s['cost_ratio']:.3f}  "
          f"({s['accuracy_vs_supervisor']:.1%} of supervisor)  mix {s['strategies']}  "
          f"escalated {s['escalation_rate']:.1%}  ECE winner {s['ece_winner_confidence']:.3f} "
          f"model {s['ece_model_confidence']:.3f}")
    w = r["warmup"]
    print(f"{'warm-up (train, paid)':34s} {w['queries']} queries  ${w['cost_usd']:.3f}  "
          f"cost {w['cost_ratio']:.3f} of supervisor on train")
    for name, b in r["baselines"].items():
        print(f"{name:34s} acc {b['accuracy']:.3f}  cost {b['cost_ratio']:.3f}")
    for c in r["curve"]:
        print(f"  λ={c['lambda']:<6g} acc {c['accuracy']:.3f}  cost {c['cost_ratio']:.3f}  "
              f"({c['accuracy_vs_supervisor']:.1%})  {c['strategies']}")


if __name__ == "__main__":
    raise SystemExit(main())
