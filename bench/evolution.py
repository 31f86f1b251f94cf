"""`selfevolve bench evolution`: one RouterBench stream served with evolution on and off (Figure 2)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from selfevolve.routing import domains

from selfevolve.evolution import gaps, metalearn, promotion, spawning, stats
from selfevolve.evolution import hierarchy as hier
from selfevolve.evolution.hierarchy import domain_catalogue
from bench.quality import CITATION, _serve, catalogue_for, embed_all
from selfevolve.models.catalogue import Catalogue, Role
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import ConfigError
from selfevolve.routing.history import History
from selfevolve.routing import Router


@dataclass
class Evolution:
    """The evolving half of the loop: every table and step of selfevolve's core, fed in stream order."""

    settings: Settings
    base: Catalogue
    lam: float
    gated: bool = False
    metalearn: bool = True
    radius: float = 0.5
    max_domains: int = 8
    hierarchy: dict = field(default_factory=dict)
    domains: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    gaps: dict = field(default_factory=dict)
    spawner: dict = field(default_factory=dict)
    theta: tuple[float, float] = (0.0, 0.0)
    answers: list = field(default_factory=list)
    log: dict = field(default_factory=lambda: {"model_events": [], "gaps": [], "spawns": [],
                                               "strategies": []})
    cycles: int = 0
    _views: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hierarchy = hier.from_catalogue(self.base)
        self.domains = domains.initialize(self.radius, self.max_domains)
        self.gaps = gaps.initialize(self.settings.window_size)
        self.spawner = spawning.initialize()
        self.theta = (self.settings.theta_high, self.settings.theta_low)
        # Cheapest first: a spawned student is meant to be cheap; nothing else is known of reserves.
        sups = [s.cost_per_call or 0.0 for s in self.base.active() if s.role == Role.SUPERVISOR]
        self.supervisor_cost = max(sups, default=0.0) or None
        self.reserve = [s.name for s in sorted(self.base.reserve(), key=lambda s: (s.cost_per_call or 0, s.name))]

    def assign(self, vec, text: str) -> int:
        self.domains, d = domains.assign(self.domains, vec, text)
        return d

    def catalogue(self, domain: int) -> Catalogue:
        k = (domain, self.hierarchy["applied"])
        if k not in self._views:
            self._views[k] = domain_catalogue(self.base, self.hierarchy, domain)
        return self._views[k]

    def _apply(self, event: dict) -> None:
        self.hierarchy = hier.apply(self.hierarchy, event)
        self.log["model_events"].append(event)

    def observe(self, domain: int, decision, verdict, outcomes: dict, ts_ms: int) -> None:
        """One delivered query: score events into the tables, the answer into the gap window."""
        # Only head-to-head answers count towards win rates: a model called alone always "wins".
        contested = verdict.scores if len(verdict.scores) >= 2 else {}
        for m, sc in contested.items():
            self.table = stats.table_agg(self.table, {
                "model": m, "domain": domain, "winner": m == verdict.winner, "confidence": sc.confidence,
                "quality": outcomes.get(m, sc.composite), "cost_usd": verdict.model_costs.get(m, 0.0)})
        # Failure is the feedback verdict on the delivered answer (users saying it was wrong), the
        # same signal the router learns from; confidence is the scorer's, from the answers alone.
        delivered = outcomes.get(verdict.winner, 0.0) if verdict.winner else 0.0
        self.gaps, recs = gaps.step(self.gaps, {"domain": domain, "confidence": verdict.confidence,
                                                "failed": delivered < 0.5, "ts_ms": ts_ms}, self.settings)
        for g in recs:
            self.log["gaps"].append(g)
            roster = {"hierarchy": self.hierarchy, "reserve": self.reserve,
                      "stats": stats.table_result(self.table)}
            self.spawner, cmds = spawning.step(self.spawner, g, roster, self.settings, "replay")
            for c in cmds:
                self.log["spawns"].append(c)
                for e in spawning.execute(c, roster):
                    self._apply(e)
        self.answers.append({"strategy": decision.strategy, "domain": domain, "n": 1,
                             "quality": delivered, "cost": verdict.cost})

    def cycle(self, ts_ms: int) -> None:
        """Promotion over the per-domain tables, then one meta-learning step on the last window."""
        self.cycles += 1
        for e in promotion.decide(stats.table_result(self.table), self.hierarchy, self.settings,
                                  self.gated, ts_ms=ts_ms):
            self._apply(e)
        if not self.metalearn:
            return
        # The last three cycles' answers, costs priced against the supervisor as the router does.
        ev = metalearn.tune(self.answers[-self.settings.window_size * 3:], *self.theta, lam=self.lam,
                            ts_ms=ts_ms, cost_scale=self.supervisor_cost)
        if (ev["theta_high"], ev["theta_low"]) != self.theta:
            self.theta = (ev["theta_high"], ev["theta_low"])
            self.log["strategies"].append(ev)


async def run_stream(settings: Settings, base: Catalogue, backend, stream, vecs: dict, lam: float, *,
                     evolve: bool, gated: bool = False, metalearn: bool = True, radius: float = 0.5,
                     max_domains: int = 8, cycle: int = 100, window: int = 100) -> dict:
    """Serve the stream once, from an empty history; returns per-window figures and, evolving, the log."""
    history = History(dim=len(next(iter(vecs.values()))))
    router = Router(settings, base, history, cost_lambda=lam)
    weights = tuple(settings.score_weights)
    evo = Evolution(settings, base, lam, gated, metalearn, radius, max_domains) if evolve else None
    rows, ids = [], []
    for i, s in enumerate(stream):
        ts = i * 1000  # one query a second: a fixed clock keeps replays identical
        vec = vecs[s.sample_id]
        cat, r = base, router
        if evo is not None:
            dom = evo.assign(vec, s.prompt)
            ids.append(dom)
            cat = evo.catalogue(dom)
            r = router.with_catalogue(cat).with_thresholds(*evo.theta)
        d, v, outcomes = await _serve(r, backend, cat, s, vec, weights, history)
        q = outcomes.get(v.winner, 0.0) if v.winner else 0.0  # gold, read only after delivery
        rows.append((q, v.cost, d.strategy))
        if evo is not None:
            evo.observe(dom, d, v, outcomes, ts)
            if (i + 1) % cycle == 0:
                evo.cycle(ts)
    out = {"windows": _windows(rows, window), "accuracy": float(np.mean([r[0] for r in rows])),
           "cost_usd": float(sum(r[1] for r in rows)),
           "strategies": dict(Counter(r[2] for r in rows))}
    if evo is not None:
        out["domain_ids"] = ids
        out["evolution"] = _summary(evo)
    return out


def _windows(rows, size: int) -> list[dict]:
    out = []
    for start in range(0, len(rows), size):
        w = rows[start:start + size]
        out.append({"start": start, "queries": len(w), "accuracy": float(np.mean([r[0] for r in w])),
                    "cost_usd": float(sum(r[1] for r in w)),
                    "strategies": dict(Counter(r[2] for r in w))})
    return out


def _summary(evo: Evolution) -> dict:
    kinds = Counter(e["kind"] for e in evo.log["model_events"])
    moves = Counter(f"{e['old_role']}->{e['new_role']}" for e in evo.log["model_events"]
                    if e["kind"] in ("promote", "demote"))
    return {"cycles": evo.cycles, "domains": len(evo.domains["centroids"]),
            "labels": {str(k): v for k, v in domains.labels(evo.domains).items()},
            "sizes": {str(k): v for k, v in domains.sizes(evo.domains).items()},
            "ids_issued": evo.domains["next_id"], "merged": evo.domains["merged"],
            "students_spawned": kinds.get("activate", 0), "spawn_commands": len(evo.log["spawns"]),
            "promotions_by_kind": dict(kinds), "role_moves": dict(moves),
            "gaps": gaps.counts(evo.gaps), "theta_final": list(evo.theta),
            "threshold_changes": len(evo.log["strategies"]), "log": evo.log,
            "hierarchy": evo.hierarchy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="selfevolve bench evolution", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="directory of <task>_<split>.csv files")
    p.add_argument("--seed", type=int, default=0, help="stream order and which models start in reserve")
    p.add_argument("--lambda", dest="lam", type=float, default=0.1, help="cost weight (router and meta-learner)")
    p.add_argument("--reserve", nargs="*", default=None,
                   help="models held back at the start (default: a seeded half of the non-supervisors)")
    p.add_argument("--k", type=int, default=8, help="most models per domain before spawning stops")
    p.add_argument("--limit", type=int, default=None, help="stream only the first N queries")
    p.add_argument("--gated", action="store_true", help="Wilson-gated promotion")
    p.add_argument("--radius", type=float, default=0.5)
    p.add_argument("--max-domains", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("bench/results/evolution.json"))
    a = p.parse_args(argv)
    settings = Settings(max_models_per_domain=a.k)
    t0 = time.perf_counter()
    ds = load_dir(a.data)
    train, test = list(ds.split("train").samples), list(ds.split("test").samples)
    # The quality bench's order (train then test, each shuffled by seed): one embedding cache serves both.
    rnd = random.Random(a.seed)
    rnd.shuffle(train)
    rnd.shuffle(test)
    stream = train + test
    if not stream:
        raise ConfigError(f"{a.data}: no RouterBench rows")
    vec_arr = embed_all(settings, [s.prompt for s in stream])
    vecs = {s.sample_id: vec_arr[i] for i, s in enumerate(stream)}
    stream = stream[: a.limit] if a.limit else stream
    models = list(ds.models)
    fit = train or test
    supervisor = max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in fit]))
    base = catalogue_for(train, test, models, supervisor)
    others = sorted(m for m in models if m != supervisor)
    reserve = a.reserve if a.reserve is not None else sorted(random.Random(a.seed).sample(others, len(others) // 2))
    unknown = (set(reserve) - set(models)) | ({supervisor} & set(reserve))
    if unknown:
        raise ConfigError(f"cannot hold back {sorted(unknown)}")
    base = Catalogue(replace(s, reserve=s.name in reserve) for s in base.models)
    from workers.backends.recorded import ReplayBackend

    backend = ReplayBackend(ds)
    kw = dict(radius=a.radius, max_domains=a.max_domains, cycle=settings.window_size, window=100)
    on = asyncio.run(run_stream(settings, base, backend, stream, vecs, a.lam, evolve=True, gated=a.gated, **kw))
    off = asyncio.run(run_stream(settings, base, backend, stream, vecs, a.lam, evolve=False, **kw))
    # The same evolution with θh/θl frozen: separates the meta-learner from spawning and promotion.
    fixed = asyncio.run(run_stream(settings, base, backend, stream, vecs, a.lam, evolve=True, gated=a.gated,
                                   metalearn=False, **kw))
    sup_usd = sum(s.costs.get(supervisor, 0.0) for s in stream)
    result = _result(a, stream, on, off, fixed, reserve, supervisor, sup_usd, base, settings)
    result["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    _plot(result, a.out.with_suffix(".png"))
    _print(result)
    return 0


def _result(a, stream, on, off, fixed, reserve, supervisor, sup_usd, base, settings) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    tasks = [s.task for s in stream]
    ids = on.pop("domain_ids")
    fixed.pop("domain_ids")
    evo = on["evolution"]
    # As assigned online (what routing saw), and with merged-away ids mapped to their survivors.
    final = [evo["merged"].get(str(d), d) for d in ids]
    evo["nmi"] = float(normalized_mutual_info_score(tasks, ids))
    evo["ari"] = float(adjusted_rand_score(tasks, ids))
    evo["nmi_after_merges"] = float(normalized_mutual_info_score(tasks, final))
    evo["ari_after_merges"] = float(adjusted_rand_score(tasks, final))
    evo["task_mix_per_domain"] = {str(d): dict(Counter(t for t, i in zip(tasks, final) if i == d))
                                  for d in sorted(set(final))}
    half = len(on["windows"]) // 2

    def tail(run, key):
        return float(np.mean([w[key] for w in run["windows"][half:]]))

    cmp = {}
    for name, run in (("on", on), ("off", off), ("on_fixed_thresholds", fixed)):
        cmp[name] = {"accuracy": run["accuracy"], "cost_usd": run["cost_usd"],
                     "cost_ratio": run["cost_usd"] / sup_usd,
                     "accuracy_per_dollar": run["accuracy"] * len(stream) / max(run["cost_usd"], 1e-12),
                     "second_half_accuracy": tail(run, "accuracy"),
                     "second_half_cost_per_window": tail(run, "cost_usd")}
    for name in ("on", "on_fixed_thresholds"):
        for k in ("accuracy", "cost_usd", "accuracy_per_dollar"):
            cmp[name][f"{k}_vs_off"] = cmp[name][k] / cmp["off"][k] - 1
    return {"data": str(a.data), "citation": CITATION, "seed": a.seed, "lambda": a.lam, "queries": len(stream),
            "supervisor": supervisor, "supervisor_cost_usd": sup_usd, "reserve": sorted(reserve),
            "active_at_start": [s.name for s in base.active()], "k": settings.max_models_per_domain,
            "gated": a.gated, "cycle_queries": settings.window_size,
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
