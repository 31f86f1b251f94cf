"""`selfevolve bench evolution`: one RouterBench stream served with evolution on and off (Figure 2).

Every pass runs the shipped folds through the in-memory driver (selfevolve/flow/driver.py): the serve
folds (router with domains, scorer, history) and, evolving, the evolution fold (statistics, promotion, gap
windows, spawner) and the meta-learner, exactly as the two stream roles run them. Gold is posted as
feedback on the models each delivered answer paid for, after delivery; nothing else reads it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.quality import CITATION, catalogue_for, embed_all
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import ConfigError
from selfevolve.evolution.hierarchy import domain_catalogue
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.flow.workload import Workload, from_samples, outcomes, plan
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing import domains
from selfevolve.routing.embed_cache import lookup

__all__ = ["domain_catalogue", "embed_all", "main", "run_stream"]


def run_stream(settings: Settings, base: Catalogue, responder, workload: Workload, vectors: dict, lam: float, *,
               evolve: bool, metalearn: bool = True, window: int = 1, report: int = 100) -> dict:
    """Serve the stream once, from an empty history; returns per-window figures and, evolving, the log."""
    s = settings.model_copy(update={"cost_lambda": lam})
    roles = (dataflow.SERVE, dataflow.HISTORY) if evolve else (dataflow.SERVE,)
    dim = len(next(iter(vectors.values())))
    flow = dataflow.build(s, base, lookup(list(vectors), np.stack(list(vectors.values()))), roles=roles, dim=dim)
    if not metalearn:  # θh/θl frozen: the same evolution without the meta-learner
        flow.folds = [f for f in flow.folds if f.name != "metalearner"]
    result = driver.replay(flow.driver(responder), workload.queries, workload.feedback, window=window)
    if result.dead_letters:
        raise ConfigError(f"{len(result.dead_letters)} events were dead-lettered, first: "
                          f"{result.dead_letters[0]['reason']}")
    outs = outcomes(result, workload)
    rows = [(o.correct or 0.0, o.cost, o.strategy) for o in outs]  # gold, judged only after delivery
    out = {"windows": _windows(rows, report), "accuracy": float(np.mean([r[0] for r in rows])),
           "cost_usd": float(sum(r[1] for r in rows)), "strategies": dict(Counter(r[2] for r in rows))}
    if evolve:
        out["domain_ids"] = [o.domain for o in outs]
        out["tasks"] = [o.task for o in outs]
        out["evolution"] = _summary(result, s, metalearn)
    return out


def _windows(rows, size: int) -> list[dict]:
    out = []
    for start in range(0, len(rows), size):
        w = rows[start:start + size]
        out.append({"start": start, "queries": len(w), "accuracy": float(np.mean([r[0] for r in w])),
                    "cost_usd": float(sum(r[1] for r in w)),
                    "strategies": dict(Counter(r[2] for r in w))})
    return out


def _summary(result: driver.Result, settings: Settings, metalearn: bool) -> dict:
    """What evolution did, from the records the folds sent and the states they ended in."""
    router, evo = result.states["router"], result.states["evolution"]
    events = result.of("model_event")
    kinds = Counter(e["kind"] for e in events)
    moves = Counter(f"{e['old_role']}->{e['new_role']}" for e in events if e["kind"] in ("promote", "demote"))
    windows = [g.window for g in evo.gaps.values()]
    answers = result.states["metalearner"].answers if metalearn else len(result.of("answer"))
    dom = router.domains
    return {"cycles": answers // settings.metalearn_every, "domains": len(dom["centroids"]),
            "labels": {str(k): v for k, v in domains.labels(dom).items()},
            "sizes": {str(k): v for k, v in domains.sizes(dom).items()},
            "ids_issued": dom["next_id"], "merged": dom["merged"],
            "students_spawned": kinds.get("activate", 0), "spawn_commands": len(result.of("spawn")),
            "promotions_by_kind": dict(kinds), "role_moves": dict(moves),
            "gaps": {"opened": sum(w.opened for w in windows), "closed": sum(w.closed for w in windows),
                     "open_now": sum(w.open for w in windows)},
            "theta_final": [router.theta_high, router.theta_low],
            "threshold_changes": len(result.of("strategy")),
            "log": {"model_events": events, "gaps": result.of("gap"), "spawns": result.of("spawn"),
                    "strategies": result.of("strategy")},
            "hierarchy": router.hierarchy}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve bench evolution", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="directory of <task>_<split>.csv files")
    p.add_argument("--seed", type=int, default=0, help="stream order and which models start in reserve")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="cost weight of router and meta-learner (default: Settings.cost_lambda)")
    p.add_argument("--reserve", nargs="*", default=None,
                   help="models held back at the start (default: a seeded half of the non-supervisors)")
    p.add_argument("--k", type=int, default=8, help="most models per domain before spawning stops")
    p.add_argument("--limit", type=int, default=None, help="stream only the first N queries")
    p.add_argument("--gated", action="store_true", help="Wilson-gated promotion (default: Settings.promote_gated)")
    p.add_argument("--radius", type=float, default=None, help="default: Settings.domain_radius")
    p.add_argument("--max-domains", type=int, default=None, help="default: Settings.max_domains")
    p.add_argument("--window", type=int, default=1, help="queries sent before their answers' feedback is posted")
    p.add_argument("--out", type=Path, default=Path("bench/results/evolution.json"))
    return p


def _setup(a):
    """Settings, the stream (train then test, each shuffled by seed: the quality bench's order, so one
    embedding cache serves both), its vectors, the catalogue with its reserve, and the supervisor."""
    given = {"domain_radius": a.radius, "max_domains": a.max_domains, "promote_gated": True if a.gated else None}
    settings = Settings.load(max_models_per_domain=a.k, **{k: v for k, v in given.items() if v is not None})
    ds = load_dir(a.data).require_responses()
    phased = plan(ds, a.seed)
    if not phased:
        raise ConfigError(f"{a.data}: no RouterBench rows")
    vecs = embed_all(settings, [s.prompt for _, s in phased])
    vectors = {s.prompt: v for (_, s), v in zip(phased, vecs)}
    phased = phased[: a.limit] if a.limit else phased
    models = list(ds.models)
    train, test = list(ds.split("train").samples), list(ds.split("test").samples)
    supervisor = max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in train or test]))
    base = catalogue_for(train, test, models, supervisor)
    others = sorted(m for m in models if m != supervisor)
    reserve = a.reserve if a.reserve is not None else sorted(random.Random(a.seed).sample(others, len(others) // 2))
    unknown = (set(reserve) - set(models)) | ({supervisor} & set(reserve))
    if unknown:
        raise ConfigError(f"cannot hold back {sorted(unknown)}")
    base = Catalogue(replace(s, reserve=s.name in reserve) for s in base.models)
    return settings, ds, phased, vectors, base, reserve, supervisor


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    t0 = time.perf_counter()
    settings, ds, phased, vectors, base, reserve, supervisor = _setup(a)
    a.lam = settings.cost_lambda if a.lam is None else a.lam
    # Every phase counts here: the whole stream is the experiment (the quality bench separates warm-up).
    work = from_samples(str(a.data), [("test", s) for _, s in phased], supervisor)
    responder = recorded(ds, base)

    def stream(**kw) -> dict:
        return run_stream(settings, base, responder, work, vectors, a.lam, window=a.window, **kw)

    on, off = stream(evolve=True), stream(evolve=False)
    # The same evolution with θh/θl frozen: separates the meta-learner from spawning and promotion.
    fixed = stream(evolve=True, metalearn=False)
    sup_usd = sum(s.costs.get(supervisor, 0.0) for _, s in phased)
    result = _result(a, on, off, fixed, reserve, supervisor, sup_usd, base, settings)
    result["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    _plot(result, a.out.with_suffix(".png"))
    _print(result)
    return 0


def _result(a, on, off, fixed, reserve, supervisor, sup_usd, base, settings) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    tasks = on.pop("tasks")
    ids = on.pop("domain_ids")
    fixed.pop("domain_ids")
    fixed.pop("tasks")
    evo = on["evolution"]
    # As assigned online (what routing saw), and with merged-away ids mapped to their survivors.
    final = [evo["merged"].get(str(d), d) for d in ids]
    evo["nmi"] = float(normalized_mutual_info_score(tasks, ids))
    evo["ari"] = float(adjusted_rand_score(tasks, ids))
    evo["nmi_after_merges"] = float(normalized_mutual_info_score(tasks, final))
    evo["ari_after_merges"] = float(adjusted_rand_score(tasks, final))
    evo["task_mix_per_domain"] = {str(d): dict(Counter(t for t, i in zip(tasks, final) if i == d))
                                  for d in sorted(set(final))}
    n = len(tasks)
    half = len(on["windows"]) // 2

    def tail(run, key):
        return float(np.mean([w[key] for w in run["windows"][half:]]))

    cmp = {}
    for name, run in (("on", on), ("off", off), ("on_fixed_thresholds", fixed)):
        cmp[name] = {"accuracy": run["accuracy"], "cost_usd": run["cost_usd"],
                     "cost_ratio": run["cost_usd"] / sup_usd,
                     "accuracy_per_dollar": run["accuracy"] * n / max(run["cost_usd"], 1e-12),
                     "second_half_accuracy": tail(run, "accuracy"),
                     "second_half_cost_per_window": tail(run, "cost_usd")}
    for name in ("on", "on_fixed_thresholds"):
        for k in ("accuracy", "cost_usd", "accuracy_per_dollar"):
            cmp[name][f"{k}_vs_off"] = cmp[name][k] / cmp["off"][k] - 1
    return {"data": str(a.data), "citation": CITATION, "seed": a.seed, "lambda": a.lam, "queries": n,
            "supervisor": supervisor, "supervisor_cost_usd": sup_usd, "reserve": sorted(reserve),
            "active_at_start": [s.name for s in base.active()], "k": settings.max_models_per_domain,
            "gated": settings.promote_gated, "cycle_queries": settings.metalearn_every, "window": a.window,
            "thresholds": {"theta_high": settings.theta_high, "theta_low": settings.theta_low,
                           "promote_min_n": settings.promote_min_n,
                           "promote_min_winrate": settings.promote_min_winrate,
                           "promote_min_confidence": settings.promote_min_confidence,
                           "gap_confidence": settings.gap_confidence,
                           "gap_failure_rate": settings.gap_failure_rate},
            "comparison": cmp, "evolution": evo, "evolution_fixed_thresholds": _brief(fixed["evolution"]),
            "on": on, "off": off, "on_fixed_thresholds": fixed}


def _brief(evo: dict) -> dict:
    return {k: evo[k] for k in ("cycles", "students_spawned", "promotions_by_kind", "role_moves", "gaps")}


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, style in (("on", "C0-"), ("on_fixed_thresholds", "C3:"), ("off", "C7--")):
        w = r[name]["windows"]
        x = [v["start"] + v["queries"] for v in w]
        ax1.plot(x, [v["accuracy"] for v in w], style, label=f"evolution {name}")
        ax2.plot(x, [v["cost_usd"] for v in w], style, label=f"evolution {name}")
    for e in r["evolution"]["log"]["model_events"]:
        ax1.axvline(e["ts_ms"] / 1000, color="C2" if e["kind"] == "activate" else "C1", alpha=0.25, lw=0.8)
    ax1.set_ylabel("accuracy per 100 queries")
    ax2.set_ylabel("USD per 100 queries")
    ax2.set_xlabel("queries streamed (green: spawned student, orange: promotion/demotion)")
    ax1.set_title("Evolution on vs off, RouterBench stream (Hu et al., 2024)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print(r: dict) -> None:
    c, e = r["comparison"], r["evolution"]
    print(f"evolution bench on {r['data']} ({r['queries']} queries) — data: {r['citation']}")
    print(f"reserve at start: {r['reserve']}")
    for name in ("on", "off", "on_fixed_thresholds"):
        x = c[name]
        print(f"evolution {name:19s}: acc {x['accuracy']:.3f}  cost ${x['cost_usd']:.3f} "
              f"({x['cost_ratio']:.3f} of supervisor)  acc/$ {x['accuracy_per_dollar']:.0f}  "
              f"2nd half acc {x['second_half_accuracy']:.3f}  mix {r[name]['strategies']}")
    for name in ("on", "on_fixed_thresholds"):
        x = c[name]
        print(f"{name} vs off: accuracy {x['accuracy_vs_off']:+.1%}  cost {x['cost_usd_vs_off']:+.1%}  "
              f"accuracy per dollar {x['accuracy_per_dollar_vs_off']:+.1%}")
    print(f"cycles {e['cycles']}  domains {e['domains']} live of {e['ids_issued']} "
          f"(NMI {e['nmi']:.3f}, ARI {e['ari']:.3f}; after merges {e['nmi_after_merges']:.3f}, "
          f"{e['ari_after_merges']:.3f})  "
          f"spawned {e['students_spawned']}  events {e['promotions_by_kind']} {e['role_moves']}  "
          f"gaps {e['gaps']}  θ {e['theta_final']} after {e['threshold_changes']} changes")
    print("domain labels: " + "; ".join(f"{k}: {v}" for k, v in e["labels"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
