"""`python -m bench.embeddings`: which query embedder, by measurement (speed on distinct texts, routing quality).

Speed: every distinct RouterBench prompt (about 3,160; none repeats, so the exact-text cache never helps) through
each embedder's production path (`Embedder.encode` with the cache off), on ONE thread, in chunks of the router's
batch size taken in turn by every embedder, so that load from other processes falls on all of them alike and the
ratios hold even where the absolute rates drift.

Quality: a plain kNN router (bench/baselines.py: the k nearest train prompts' mean accuracy minus λ times their
mean cost in supervisor calls) on RouterBench's train/test split, with each embedding, over a grid of λ. Each
embedder gives a cost-accuracy curve; as in RouterBench (Hu et al., 2024) we take its non-decreasing concave hull
(mixing two routers reaches any point between them) and compare accuracy at matched cost and the hull's mean
over the cost range all curves share (AIQ). Paired bootstrap over test prompts gives each difference's 95% interval.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.baselines import baselines
from selfevolve.config import DEFAULTS, Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.routing.embed import Embedder, MiniLM, StaticModel, build_static, static_dir
from selfevolve.routing.linear import topk

CITATION = "RouterBench (Hu et al., 2024, 'RouterBench: A Benchmark for Multi-LLM Routing System')"
LAMBDAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0)
BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)  # cost as a fraction of calling the supervisor on every test prompt
REFERENCE = "minilm_fp32"
_DEFAULT_SETTINGS = DEFAULTS  # the declared defaults: which embedder they select is part of the record


def variants(settings: Settings) -> dict[str, tuple[str, dict, object]]:
    """name -> (what it is, the settings that select it or {} where none does, a factory of its model)."""
    where = static_dir(settings)
    return {
        "minilm_fp32": ("MiniLM, torch fp32, last 128 pieces", {"embedder": "minilm", "embed_max_tokens": 128},
                        lambda: MiniLM(128, 1, "float32")),
        "minilm_bf16": ("MiniLM, torch bf16, last 128 pieces", {}, lambda: MiniLM(128, 1, "bfloat16")),
        "minilm_64": ("MiniLM, torch fp32, last 64 pieces", {"embedder": "minilm", "embed_max_tokens": 64},
                      lambda: MiniLM(64, 1, "float32")),
        "static256": ("static (model2vec), 256 dims, last 128 pieces",
                      {"embedder": "static", "embed_static_dims": 256, "embed_max_tokens": 128},
                      lambda: StaticModel(where, 256, 128)),
        "static384": ("static (model2vec), 384 dims, last 128 pieces",
                      {"embedder": "static", "embed_static_dims": 384, "embed_max_tokens": 128},
                      lambda: StaticModel(where, 384, 128)),
        "static256_512": ("static (model2vec), 256 dims, last 512 pieces (~whole prompt)",
                          {"embedder": "static", "embed_static_dims": 256, "embed_max_tokens": 512},
                          lambda: StaticModel(where, 256, 512)),
    }


def measure_speed(settings: Settings, names: list[str], texts: list[str], batch: int,
                  log=print) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Each embedder over every text once, interleaved chunk by chunk; rates and the vectors."""
    table = variants(settings)
    embedders, out = {}, {}
    for name in names:
        t = time.perf_counter()
        e = Embedder(settings, batch_size=batch, threads=1, cache_size=0)
        e._model = table[name][2]()
        e.encode(["warm-up", "a second warm-up text"])
        out[name] = {"load_s": time.perf_counter() - t, "seconds": 0.0}
        embedders[name] = e
    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for c, chunk in enumerate(chunks):
        for j in range(len(names)):
            name = names[(c + j) % len(names)]  # each chunk starts with the next embedder
            t = time.perf_counter()
            parts[name].append(embedders[name].encode(chunk))
            out[name]["seconds"] += time.perf_counter() - t
        if c % 10 == 9:
            log(f"  {min(len(texts), (c + 1) * batch)}/{len(texts)} texts, {time.perf_counter() - t0:.0f}s")
    vecs = {n: np.concatenate(parts[n]) for n in names}
    for name in names:
        r = out[name]
        r.update(texts=len(texts), dim=int(vecs[name].shape[1]), texts_per_s=len(texts) / r["seconds"])
    return out, vecs


def _neighbours(train_vecs: np.ndarray, test_vecs: np.ndarray, k: int) -> np.ndarray:
    return np.stack([topk(train_vecs @ v, k)[0] for v in test_vecs])


def _hull(cost: np.ndarray, acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing upper concave hull of (cost, accuracy) points: what mixing the routers reaches."""
    pts = sorted(zip(cost.tolist(), acc.tolist()))
    best, front = -1.0, []
    for c, a in pts:  # Pareto front first: more cost must buy more accuracy
        if a > best:
            front.append((c, a))
            best = a
    hull: list[tuple[float, float]] = []
    for p in front:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):  # the middle point lies under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array([h[0] for h in hull]), np.array([h[1] for h in hull])


def _at(hx: np.ndarray, hy: np.ndarray, c: float) -> float:
    """The hull's accuracy at cost c (the hull's last accuracy beyond its end; NaN below its start)."""
    return float("nan") if c < hx[0] - 1e-12 else float(np.interp(c, hx, hy))


def _aiq(hx: np.ndarray, hy: np.ndarray, lo: float, hi: float) -> float:
    xs = np.linspace(lo, hi, 201)
    return float(np.mean([_at(hx, hy, x) for x in xs]))


def measure_quality(train, test, models, supervisor: str, vec: dict[str, tuple[np.ndarray, np.ndarray]], k: int,
                    seed: int, boots: int) -> tuple[dict, np.ndarray]:
    """Per embedder: the kNN router's (λ, accuracy, cost ratio) points from bench/baselines.py, their hull,
    accuracy at matched cost and AIQ; and each bootstrap draw's AIQ per embedder (draws x embedders, paired:
    every embedder is scored on the same resampled test prompts, over that draw's shared cost range)."""
    correct = np.array([[s.correct.get(m, 0.0) for m in models] for s in train])
    costs = np.array([[s.costs.get(m, 0.0) for m in models] for s in train])
    t_correct = np.array([[s.correct.get(m, 0.0) for m in models] for s in test])
    t_costs = np.array([[s.costs.get(m, 0.0) for m in models] for s in test])
    sup_cost = np.mean([s.costs.get(supervisor, 0.0) for s in train]) or 1.0
    sup_test = sum(s.costs.get(supervisor, 0.0) for s in test)
    res, per_sample = {}, {}
    for name, (tr, te) in vec.items():
        points = []
        for lam in LAMBDAS:
            acc, usd = baselines(train, test, models, supervisor, tr, te, seed, lam, k)["knn_cost_aware"]
            points.append({"lambda": lam, "accuracy": acc, "cost_ratio": usd / sup_test})
        # The same choices per test prompt (for the bootstrap), checked against baselines' totals.
        nb = _neighbours(tr, te, k)
        rows_acc, rows_cost = [], []
        for p in points:
            u = correct[nb].mean(1) - p["lambda"] * costs[nb].mean(1) / sup_cost
            pick = np.argmax(u, axis=1)
            rows_acc.append(t_correct[np.arange(len(test)), pick])
            rows_cost.append(t_costs[np.arange(len(test)), pick] / sup_test * len(test))
            assert abs(rows_acc[-1].mean() - p["accuracy"]) < 1e-9, "replica disagrees with bench/baselines.py"
            assert abs(rows_cost[-1].mean() - p["cost_ratio"]) < 1e-9, "replica disagrees with bench/baselines.py"
        per_sample[name] = (np.array(rows_acc), np.array(rows_cost))
        res[name] = {"points": points, "knn_accuracy": points[0]["accuracy"], "knn_cost_ratio": points[0]["cost_ratio"]}
    names = list(vec)

    def draw(idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict]:
        """AIQ and accuracy at each budget per embedder, on test prompts idx (all when None)."""
        hulls = {}
        for n in names:
            a, c = per_sample[n]
            if idx is not None:
                a, c = a[:, idx], c[:, idx]
            hulls[n] = _hull(c.mean(1), a.mean(1))
        lo = max(h[0][0] for h in hulls.values())
        hi = min(h[0][-1] for h in hulls.values())
        aiq = np.array([_aiq(*hulls[n], lo, hi) for n in names])
        at = np.array([[_at(*hulls[n], b) for b in BUDGETS] for n in names])
        return aiq, at, {"hulls": hulls, "range": [lo, hi]}

    aiq, at, full = draw(None)
    rng = np.random.default_rng(seed)
    boot = [draw(rng.integers(0, len(test), len(test))) for _ in range(boots)]
    boot_aiq = np.array([b[0] for b in boot])  # draws x embedders
    boot_at = np.array([b[1] for b in boot])  # draws x embedders x budgets
    ref = names.index(REFERENCE) if REFERENCE in names else None
    for i, name in enumerate(names):
        hx, hy = full["hulls"][name]
        r = res[name]
        r.update(hull=[{"cost_ratio": float(x), "accuracy": float(y)} for x, y in zip(hx, hy)], aiq=float(aiq[i]),
                 accuracy_at_cost={str(b): (None if np.isnan(v) else float(v)) for b, v in zip(BUDGETS, at[i])})
        if ref is not None and i != ref:
            d = boot_aiq[:, i] - boot_aiq[:, ref]
            r["aiq_minus_reference"] = {"value": float(aiq[i] - aiq[ref]), "ci95": _ci(d)}
            r["accuracy_at_cost_minus_reference"] = {
                str(b): (None if np.isnan(at[i, j] - at[ref, j]) else
                         {"value": float(at[i, j] - at[ref, j]), "ci95": _ci(boot_at[:, i, j] - boot_at[:, ref, j])})
                for j, b in enumerate(BUDGETS)}
    return ({"cost_range": full["range"], "supervisor": supervisor, "k": k, "lambdas": list(LAMBDAS),
             "budgets": list(BUDGETS), "bootstrap": boots, "embedders": res,
             "test_prompts": len(test), "train_prompts": len(train)}, boot_aiq)


def _ci(d: np.ndarray) -> list[float] | None:
    """95% interval of a bootstrap difference (draws where it is undefined left out)."""
    d = d[~np.isnan(d)]
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if d.size else None


def overlap(vec: dict[str, tuple[np.ndarray, np.ndarray]], k: int) -> dict[str, float]:
    """Mean share of a test prompt's k nearest train prompts that the reference embedding also finds."""
    if REFERENCE not in vec:
        return {}
    ref = _neighbours(*vec[REFERENCE], k)
    return {n: float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, _neighbours(*v, k))]))
            for n, v in vec.items()}


def default_variant(table: dict, settings: Settings) -> str | None:
    """The measured embedder that settings' defaults select."""
    for name, (_, chosen, _) in table.items():
        if chosen and all(getattr(settings, k) == v for k, v in chosen.items()):
            return name
    return None


def choose(result: dict, boot_aiq: np.ndarray) -> tuple[str, str]:
    """The default the measurement supports, and why. Candidates: embedders a setting selects whose AIQ is
    not measurably below MiniLM fp32's (the 95% interval of the difference reaches 0). Pick the fastest
    (rates within 5% count as tied: the fewer dims win, a smaller history and record), unless a slower
    candidate's AIQ is measurably above the pick's; then the best such one."""
    names = list(result["embedders"])
    emb = result["embedders"]
    ok = [n for n in names if emb[n]["settings"] and
          (n == REFERENCE or ((emb[n].get("aiq_minus_reference") or {}).get("ci95") or [0, 0])[1] >= 0)]
    if not ok:
        return REFERENCE, "no candidate"
    top = max(emb[n]["texts_per_s"] for n in ok)
    pick = min((n for n in ok if emb[n]["texts_per_s"] >= 0.95 * top), key=lambda n: (emb[n]["dim"], -emb[n]["aiq"]))
    why = (f"{pick}: the fastest ({emb[pick]['texts_per_s']:.0f} texts/s) of the embedders whose kNN-router AIQ is "
           f"not measurably below MiniLM fp32's")
    col = {n: i for i, n in enumerate(names)}
    better = [n for n in ok if n != pick and
              np.nanpercentile(boot_aiq[:, col[n]] - boot_aiq[:, col[pick]], 2.5) > 0]
    if better:
        best = max(better, key=lambda n: emb[n]["aiq"])
        why = f"{best}: measurably more accurate (AIQ) than the fastest candidate, {pick}"
        pick = best
    for n in names:  # every embedder against the pick, for the record
        if n != pick:
            emb[n]["aiq_minus_choice"] = {"value": emb[n]["aiq"] - emb[pick]["aiq"],
                                          "ci95": _ci(boot_aiq[:, col[n]] - boot_aiq[:, col[pick]])}
    return pick, why


def _print(result: dict) -> None:
    q = result["quality"]
    print(f"{result['texts']} distinct RouterBench prompts, 1 thread, batches of {result['batch']}; "
          f"kNN k={q['k']} on {q['train_prompts']} train / {q['test_prompts']} test prompts; AIQ over cost "
          f"{q['cost_range'][0]:.3f}..{q['cost_range'][1]:.3f} of the supervisor's")
    head = (f"{'embedder':<14} {'dim':>4} {'texts/s':>8} {'x fp32':>7} {'load s':>6} {'kNN acc':>7} "
            f"{'acc@0.1':>7} {'acc@0.2':>7} {'AIQ':>6} {'dAIQ 95% CI':>18} {'nbr':>5}")
    print(head)
    print("-" * len(head))
    for name, r in result["embedders"].items():
        d = r.get("aiq_minus_reference")
        ci = f"[{d['ci95'][0]:+.3f},{d['ci95'][1]:+.3f}]" if d and d["ci95"] else "reference"
        a1, a2 = (r["accuracy_at_cost"][b] for b in ("0.1", "0.2"))
        fmt = lambda v: "   n/a" if v is None else f"{v:.3f}"  # noqa: E731
        x = "n/a" if r["speedup"] is None else f"{r['speedup']:.1f}"
        nbr = "n/a" if r["neighbour_overlap"] is None else f"{r['neighbour_overlap']:.2f}"
        print(f"{name:<14} {r['dim']:>4} {r['texts_per_s']:>8.1f} {x:>7} {r['load_s']:>6.1f} "
              f"{r['knn_accuracy']:>7.3f} {fmt(a1):>7} {fmt(a2):>7} {r['aiq']:>6.3f} {ci:>18} {nbr:>5}")
    print(f"measured choice: {result['why']}; settings default: {result['settings_default']}")


def main(argv: list[str] | None = None) -> int:
    try:  # one BLAS thread too: on a busy machine threaded OpenBLAS matrix-vector products crawl
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _main(argv)
    with threadpool_limits(1):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embeddings", description=__doc__.split("\n")[0])
    settings = Settings.load()
    p.add_argument("--data", type=Path, default=Path(settings.data_dir) / "routerbench-0shot")
    p.add_argument("--only", default=None, help="comma-separated embedders (default: all)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/embeddings.json"))
    a = p.parse_args(argv)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread is the point
    t0 = time.perf_counter()
    build_static(settings)
    build = json.loads((static_dir(settings) / "build.json").read_text())
    table = variants(settings)
    names = [n.strip() for n in a.only.split(",")] if a.only else list(table)
    ds = load_dir(a.data)
    train, test = list(ds.split("train").samples), list(ds.split("test").samples)
    models = list(ds.models)
    supervisor = max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in train]))
    texts = list(dict.fromkeys(s.prompt for s in ds.samples))
    rng = np.random.default_rng(a.seed)
    texts = [texts[i] for i in rng.permutation(len(texts))]
    print(f"embedding {len(texts)} distinct prompts with {', '.join(names)}")
    speed, vecs = measure_speed(settings, names, texts, a.batch)
    row = {t: i for i, t in enumerate(texts)}
    split = {n: (v[[row[s.prompt] for s in train]], v[[row[s.prompt] for s in test]]) for n, v in vecs.items()}
    quality, boot_aiq = measure_quality(train, test, models, supervisor, split, settings.knn_k, a.seed, a.bootstrap)
    nbr = overlap(split, settings.knn_k)
    ref_rate = speed.get(REFERENCE, {}).get("texts_per_s")
    embedders = {}
    for n in names:
        r = {"what": table[n][0], "settings": table[n][1], **speed[n], **quality["embedders"][n],
             "speedup": speed[n]["texts_per_s"] / ref_rate if ref_rate else None,
             "neighbour_overlap": nbr.get(n)}
        if n.startswith("minilm") and REFERENCE in vecs:  # the same model: its vectors are comparable
            r["cosine_to_reference"] = float(np.mean(np.sum(vecs[n] * vecs[REFERENCE], axis=1)))
        embedders[n] = r
    result = {"data": str(a.data), "citation": CITATION, "texts": len(texts), "threads": 1, "batch": a.batch,
              "reference": REFERENCE, "static_build": build, "embedders": embedders,
              "quality": {k: v for k, v in quality.items() if k != "embedders"},
              "settings_default": default_variant(table, _DEFAULT_SETTINGS),
              "settings_in_force": default_variant(table, settings), "cpu_count": os.cpu_count(),
              "load_average_at_end": list(os.getloadavg())}
    result["measured_choice"], result["why"] = choose(result, boot_aiq)
    result["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    _print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
