"""`selfevolve bench quality`: the online routing protocol on RouterBench-format data vs baselines (Table 1)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfevolve.scoring import arbiter

from selfevolve.routing import learning
from bench.baselines import baselines
from selfevolve.scoring.calibration import ece
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import BackendError, ConfigError
from selfevolve.routing.history import History
from selfevolve.routing import Router, RouteQuery

CITATION = "RouterBench (Hu et al., 2024, 'RouterBench: A Benchmark for Multi-LLM Routing System')"
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0)


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


def embed_all(settings: Settings, prompts: list[str]) -> np.ndarray:
    """MiniLM vectors of prompts, cached per text under settings.cache_dir (any order, any subset)."""
    from selfevolve.routing.embed import Embedder

    path = Path(settings.cache_dir) / "embed" / "minilm128.npz"
    keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cache = dict(zip(z["keys"].tolist(), z["vecs"]))
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        text = {k: p for k, p in zip(keys, prompts)}
        t = time.perf_counter()
        vecs = Embedder(settings).encode([text[k] for k in missing])
        dt = time.perf_counter() - t
        print(f"embedded {len(missing)} prompts in {dt:.1f}s ({len(missing) / dt:.1f} texts/s, 1 thread)")
        cache.update(zip(missing, vecs))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=np.array(list(cache)), vecs=np.stack(list(cache.values())))
    return np.stack([cache[k] for k in keys])


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


async def _serve(router: Router, backend, catalogue, s, vec, weights, history):
    """One query, exactly as the stream does it: route, call, arbitrate, deliver, then feedback."""
    d = router.route(RouteQuery(s.sample_id, s.prompt, vector=vec))
    state, out = arbiter.start(d, weights)
    verdict = None
    while out:
        nxt = []
        for o in out:
            if isinstance(o, arbiter.Verdict):
                verdict = o
                continue
            try:
                c = await backend.complete(catalogue.get(o.model), s.prompt, query_id=s.sample_id,
                                           metadata={"sample_id": s.sample_id})
                resp = arbiter.Response(s.sample_id, o.model, c.answer, True, c.cost_usd, o.stage)
            except BackendError as e:
                # The provider bills an empty answer too: charge its recorded price.
                resp = arbiter.Response(s.sample_id, o.model, "", False, s.costs.get(o.model, 0.0), o.stage, str(e))
            state, more = arbiter.step(state, resp)
            nxt.extend(more)
        out = nxt
    assert verdict is not None
    learning.record_delivery(history, vec, verdict, task=s.task)
    # Delivered: only now does the verdict of each model we paid for come back on the feedback topic.
    outcomes = {}
    for m in verdict.models_called:
        q = backend.verdict(s.sample_id, m)
        learning.apply_feedback(history, learning.Feedback(s.sample_id, m, q))
        outcomes[m] = q
    return d, verdict, outcomes


async def online(settings, catalogue, backend, warmup, stream, vecs, lam, **router_kw) -> Run:
    history = History()
    router = Router(settings, catalogue, history, cost_lambda=lam, **router_kw)
    weights = tuple(settings.score_weights)
    warm_cost = 0.0
    for s in warmup:
        _, v, _ = await _serve(router, backend, catalogue, s, vecs[s.sample_id], weights, history)
        warm_cost += v.cost
    right, cost, strat, esc, calls = 0.0, 0.0, {}, 0, 0
    conf_w, out_w, conf_m, out_m = [], [], [], []
    for s in stream:
        d, v, outcomes = await _serve(router, backend, catalogue, s, vecs[s.sample_id], weights, history)
        ok = outcomes.get(v.winner, 0.0) if v.winner else 0.0  # judged against gold only after delivery
        right += ok
        cost += v.cost
        strat[d.strategy] = strat.get(d.strategy, 0) + 1
        esc += v.stages > 1
        calls += len(v.models_called)
        conf_w.append(v.confidence)
        out_w.append(ok)
        for m, q in outcomes.items():
            conf_m.append(d.estimates.get(m, 0.5))
            out_m.append(q)
    n = max(1, len(stream))
    return Run(right / n, cost, warm_cost, len(warmup), len(stream), strat, esc / n,
               ece(conf_w, out_w), ece(conf_m, out_m), calls / n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="selfevolve bench quality", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="directory of <task>_<split>.csv files")
    p.add_argument("--supervisor", default=None, help="model at the top (default: the priciest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="cost weight of the headline run")
    p.add_argument("--lambdas", type=float, nargs="*", default=list(LAMBDAS))
    p.add_argument("--theta-high", type=float, default=None, help="default: Settings.theta_high")
    p.add_argument("--theta-low", type=float, default=None, help="default: Settings.theta_low")
    p.add_argument("--quick", action="store_true", help="headline run only: no baselines, ablations or curve")
    p.add_argument("--no-warmup", action="store_true", help="skip replaying *_train.csv first")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    a = p.parse_args(argv)
    settings = Settings()
    t0 = time.perf_counter()
    ds = load_dir(a.data)
    train, test = list(ds.split("train").samples), list(ds.split("test").samples)
    if not test:
        raise ConfigError(f"{a.data}: no *_test.csv rows to stream")
    models = list(ds.models)
    supervisor = a.supervisor or max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in train or test]))
    if supervisor not in models:
        raise ConfigError(f"supervisor {supervisor!r} is not among the data's models {models}")
    rnd = random.Random(a.seed)
    rnd.shuffle(train)
    rnd.shuffle(test)
    warmup = [] if a.no_warmup else train
    all_s = train + test
    vec_arr = embed_all(settings, [s.prompt for s in all_s])
    vecs = {s.sample_id: vec_arr[i] for i, s in enumerate(all_s)}
    catalogue = catalogue_for(train, test, models, supervisor)
    from workers.backends.recorded import ReplayBackend

    backend = ReplayBackend(ds)
    sup_usd = sum(s.costs.get(supervisor, 0.0) for s in test)
    sup_train_usd = sum(s.costs.get(supervisor, 0.0) for s in warmup) or 1.0

    thetas = dict(theta_high=a.theta_high if a.theta_high is not None else settings.theta_high,
                  theta_low=a.theta_low if a.theta_low is not None else settings.theta_low)

    def run(lam, **kw) -> Run:
        return asyncio.run(online(settings, catalogue, backend, warmup, test, vecs, lam, **thetas, **kw))

    head = run(a.lam)
    result = {
        "data": str(a.data), "citation": CITATION, "supervisor": supervisor, "seed": a.seed, "lambda": a.lam,
        **thetas, "knn_k": settings.knn_k,
        "system": {"accuracy": head.accuracy, "cost_ratio": head.cost / sup_usd, "queries": head.queries,
                   "cost_usd": head.cost, "strategies": head.strategies, "escalation_rate": head.escalation_rate,
                   "calls_per_query": head.calls_per_query,
                   "accuracy_vs_supervisor": None, "ece_winner_confidence": head.ece_winner,
                   "ece_model_confidence": head.ece_models},
        "warmup": {"queries": head.warmup_queries, "cost_usd": head.warmup_cost,
                   "cost_ratio": head.warmup_cost / sup_train_usd if warmup else 0.0},
    }
    if a.quick:
        s = result["system"]
        print(json.dumps({k: s[k] for k in ("accuracy", "cost_ratio", "strategies", "escalation_rate")}),
              f"{s['accuracy'] / np.mean([x.correct.get(supervisor, 0.0) for x in test]):.1%} of supervisor",
              f"warm-up {result['warmup']['cost_ratio']:.3f}")
        return 0
    base = baselines(train, test, models, supervisor,
                     np.stack([vecs[s.sample_id] for s in train]) if train else None,
                     np.stack([vecs[s.sample_id] for s in test]), a.seed, a.lam, settings.knn_k)
    result["baselines"] = {k: {"accuracy": acc, "cost_ratio": usd / sup_usd} for k, (acc, usd) in base.items()}
    sup_acc = result["baselines"]["supervisor_only"]["accuracy"]
    result["system"]["accuracy_vs_supervisor"] = head.accuracy / sup_acc if sup_acc else None
    ablations = {"no_similarity": dict(use_similarity=False), "no_cascade": dict(cascade=False)}
    for name, kw in ablations.items():
        r = run(a.lam, **kw)
        result["baselines"][f"ablation_{name}"] = {"accuracy": r.accuracy, "cost_ratio": r.cost / sup_usd}
    r0 = run(0.0)
    result["baselines"]["ablation_no_cost_awareness"] = {"accuracy": r0.accuracy, "cost_ratio": r0.cost / sup_usd}
    result["curve"] = []
    for lam in a.lambdas:
        r = r0 if lam == 0.0 else head if lam == a.lam else run(lam)
        result["curve"].append({"lambda": lam, "accuracy": r.accuracy, "cost_ratio": r.cost / sup_usd,
                                "accuracy_vs_supervisor": r.accuracy / sup_acc if sup_acc else None,
                                "warmup_cost_ratio": r.warmup_cost / sup_train_usd if warmup else 0.0,
                                "strategies": r.strategies})
    result["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    from bench.plotting import plot_quality

    plot_quality(result, a.out.with_suffix(".png"))
    _print(result)
    return 0


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
