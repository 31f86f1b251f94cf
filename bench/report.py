"""`python -m bench.report`: the README's Results section, printed from bench/results/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(results: Path, name: str) -> dict | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def quality(q: dict) -> list[str]:
    sup = q["baselines"]["supervisor_only"]["accuracy"]
    s, w = q["system"], q["warmup"]
    lams = " ".join(f"{c['lambda']:g}" for c in q["curve"])
    others = [p for p in (q.get("pools") or {}).values() if p["curve"] != q["curve"]]
    pools_arg = (" --pools --pool-lambdas " + " ".join(f"{c['lambda']:g}" for c in others[0]["curve"])
                 if others else " --pools" if q.get("pools") else "")
    out = ["### Routing quality (`bench/results/quality.json`, `quality.png`)", "",
           f"`selfevolve bench quality --data ../shared/data/routerbench-0shot --lambdas {lams}{pools_arg}`: "
           f"{s['queries']} test queries, seed {q['seed']}, λ={q['lambda']}, θh={q['theta_high']}, θl={q['theta_low']}; "
           f"the warm-up on {w['queries']} train queries is paid for: ${w['cost_usd']:.2f}, "
           f"{w['cost_ratio']:.3f} of the supervisor's cost on train.", "",
           "| policy | accuracy | of supervisor | cost vs supervisor |", "|---|---|---|---|",
           f"| **selfevolve (λ={q['lambda']})** | {s['accuracy']:.3f} | {s['accuracy'] / sup:.1%} | {s['cost_ratio']:.3f} |"]
    out += [f"| {k.replace('_', ' ')} | {b['accuracy']:.3f} | {b['accuracy'] / sup:.1%} | {b['cost_ratio']:.3f} |"
            for k, b in q["baselines"].items()]
    out += ["", "λ curve: " + "; ".join(f"λ={c['lambda']}: {c['accuracy']:.3f} ({c['accuracy'] / sup:.1%}) at "
                                        f"{c['cost_ratio']:.3f}" for c in q["curve"]) + ".", "",
            f"Strategy mix {s['strategies']}, escalation rate {s['escalation_rate']:.3f}, calibration error (ECE) "
            f"{s['ece_winner_confidence']:.3f} for the winner's confidence and {s['ece_model_confidence']:.3f} "
            "for the per-model estimates."]
    return out + pools(q.get("pools") or {})


def _pt(p: dict | None) -> str:
    return "none" if p is None else f"{p['accuracy_vs_supervisor']:.1%} at {p['cost_ratio']:.3f} (λ={p['lambda']:g})"


def _best_under(curve: list[dict], cost: float) -> dict | None:
    ok = [c for c in curve if c["cost_ratio"] <= cost]
    return max(ok, key=lambda c: (c["accuracy_vs_supervisor"] or 0.0, -c["cost_ratio"])) if ok else None


def pools(ps: dict) -> list[str]:
    """One row per model pool (`--pools`): its curve at the goals' costs, the quality-target run, kNN."""
    if not ps:
        return []
    t0 = next(iter(ps.values()))["target"]
    audits = f"audit rate {t0['audit_rate']:g}"
    if "audit_calibration" in t0:
        audits = f"audit rate {t0['audit_start_rate']:g} for the first {t0['audit_calibration']} audits, then " \
                 f"{t0['audit_rate']:g}"
    out = ["", f"Model pools (`--pools`; quality target {t0['target']:g}, {audits}): of the "
           "supervisor's accuracy. \"achieved\" is measured on the test half against gold after the fact (95% "
           "bootstrap); \"estimate\" is the system's own online estimate at the end with its 95% interval, from "
           "feedback and audits only; the target run's cost includes its audits.", "",
           "| pool | test queries | best at ≤ 0.10 | best at ≤ 0.30 | best at ≤ 0.50 | target: achieved [95%] | "
           "estimate [95%] | target cost (λ, audits) | cheapest curve point ≥ target | kNN + cost, best at ≤ 0.50 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in ps.items():
        t, c = p["target"], p["curve"]
        lo, hi = t["achieved_interval"]
        out.append(f"| {name} | {p['queries']} | {_pt(_best_under(c, 0.10))} | {_pt(_best_under(c, 0.30))} | "
                   f"{_pt(_best_under(c, 0.50))} | {t['achieved']:.1%} [{lo:.1%}, {hi:.1%}] | "
                   f"{t['estimate']:.1%} [{t['interval'][0]:.1%}, {t['interval'][1]:.1%}] | {t['cost_ratio']:.3f} "
                   f"(λ={t['cost_lambda']:.3g}, {t['audits']}) | {_pt(t['cheapest_curve_point'])} | "
                   f"{_pt(_best_under(p.get('knn_curve') or [], 0.50))} |")
    for name, p in ps.items():
        out += ["", f"{name} λ curve: " + "; ".join(f"λ={c['lambda']:g}: {c['accuracy_vs_supervisor']:.1%} at "
                                                     f"{c['cost_ratio']:.3f}" for c in p["curve"]) + "."]
    return out


_RATIO = {"qps_over_embedding": "configured embedder alone", "qps_over_minilm_embedding": "MiniLM alone",
          "qps_over_broker": "bare broker"}
_GOAL = {"distinct_qps": "distinct-text rate ≥ {} q/s", "sustained_p50_ms": "sustained p50 ≤ {} ms",
         "sustained_p99_ms": "sustained p99 ≤ {} ms", "pipeline_over_embedding": "pipeline ≥ {} of its embedding baseline"}


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.0f} ms" if x < 10_000 else f"{x / 1000:.0f} s"


def _cpu_row(d: dict) -> list[str]:
    cpu = d.get("cpu_ms_per_query") or {}
    names = {"streams": "serve", "model-worker-0": "model"}
    parts = ", ".join(f"{names.get(k, k)} {v:.1f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
                      if v >= 0.05)
    return [f"| CPU ms per distinct query, by process ({parts}) | {sum(cpu.values()):.1f} ms |"] if cpu else []


def throughput(t: dict) -> list[str]:
    d, s, b, w = t["distinct"], t["sustained"], t["baselines"], t["workload"]
    curve = "; ".join(f"{p['repeat_rate']:g}: {p['qps']:.1f} q/s" for p in t["repeat_curve"])
    out = ["### Throughput (`bench/results/throughput.json`)", "",
           f"`selfevolve bench throughput --seconds {float(t['args']['seconds']):g}` (embedder "
           f"`{t['embedder']['id']}`). Workload: {w['queries']}. Backend: {w['backend']}. Stack: {w['stack']}. "
           f"Machine: {w['machine']}.", "",
           "| measure | value |", "|---|---|",
           f"| **queries per second, every text distinct** (1 serve worker; {d['answers']} queries over "
           f"{d['seconds']:.0f} s) | **{t['qps']:.1f}** |",
           f"| p50 / p99 produce-to-answer in that run ({d['window']} in flight: mostly queueing) | "
           f"{_ms(d['p50_ms'])} / {_ms(d['p99_ms'])} |",
           f"| p50 / p99 produce-to-answer at a steady {s['offered_qps']:g} q/s (half the distinct rate, "
           f"{s['answers']} queries) | {_ms(s['p50_ms'])} / {_ms(s['p99_ms'])} |",
           *([f"| p50 / p99 produce-to-answer at a light {t['light_load']['offered_qps']:g} q/s (the latency floor, "
               f"no queue) | {_ms(t['light_load']['p50_ms'])} / {_ms(t['light_load']['p99_ms'])} |"]
             if "light_load" in t else []),
           f"| router decision time p50 at {s['offered_qps']:g} q/s (a query's share of its batch) | "
           f"{s.get('router_p50_ms') or 0:.2f} ms |",
           f"| queries per second by repeat rate (a repeat: an earlier query's exact text) | {curve} |",
           *_cpu_row(d)]
    measured = [p for p in t["scaling"] if p["qps"] is not None]
    if len(measured) > 1:  # one consumer group, distinct texts; what limits it: the JSON's scaling_limit
        out += ["| queries per second by serve workers, distinct texts | " + "; ".join(
            f"{p['serve_workers']}: {p['qps']:.1f} q/s" for p in measured) + " |"]
    out += [f"| {p['serve_workers']} serve workers | {p['why'].split('. ')[0]} |"
            for p in t["scaling"] if p["qps"] is None]
    out += [f"| baseline: bare produce-to-consume on the same broker | "
            f"{b['broker_roundtrip']['msgs_per_s']:.0f} msg/s |"]
    out += [f"| baseline: {v['embedder']} embedding alone, distinct texts (1 thread, batches of {v['batch']}) | "
            f"{v['texts_per_s']:.1f} texts/s |" for k, v in b.items() if k.startswith("embedding")]
    out += [f"| distinct-text rate / {_RATIO[k]} | {v:.3g} |" for k, v in t["ratios"].items() if k in _RATIO]
    g = t["goals"]
    out += ["", "Goals: " + "; ".join(f"{label.format(g[k])}: {'reached' if g['reached'][k] else 'not reached'}"
                                      for k, label in _GOAL.items()) + f". Repeat curve: {w['repeats']}."]
    return out


def evolution(e: dict) -> list[str]:
    c, ev = e["comparison"], e["evolution"]
    out = ["### Evolution (`bench/results/evolution.json`, `evolution.png`)", "",
           f"`selfevolve bench evolution --data ../shared/data/routerbench-0shot`: all {e['queries']} queries "
           f"(train, then test) from an empty history, λ={e['lambda']}, reserve pool at start {e['reserve']}; the "
           "same stream with evolution on, off, and on with θh/θl frozen.", "",
           "| run | accuracy | cost vs supervisor | accuracy per $ | 2nd-half accuracy |", "|---|---|---|---|---|"]
    out += [f"| {k.replace('_', ' ')} | {v['accuracy']:.3f} | {v['cost_ratio']:.3f} | {v['accuracy_per_dollar']:.0f} | "
            f"{v['second_half_accuracy']:.3f} |" for k, v in c.items()]
    on = c["on"]
    out += ["", f"On vs off: accuracy {on['accuracy_vs_off']:+.1%}, cost {on['cost_usd_vs_off']:+.1%}, accuracy per "
            f"dollar {on['accuracy_per_dollar_vs_off']:+.1%}. {ev['cycles']} evolution cycles; {ev['domains']} live "
            f"domains (NMI {ev['nmi']:.3f}, ARI {ev['ari']:.3f} against the true tasks); {ev['students_spawned']} "
            f"students spawned; promotions by kind {ev['promotions_by_kind']}; gaps {ev['gaps']}; "
            f"{ev['threshold_changes']} threshold changes."]
    return out


def distill(d: dict) -> list[str]:
    out = ["### Distillation (`bench/results/distill.json`)"]
    for task, t in d["tasks"].items():
        run = t.get("run", d)  # older files kept one run's arguments at the top
        a = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in run["args"].items() if k != "out" and v not in ("None", ""))
        out += ["", f"{task}: {t['n_train']} training and {t['n_test']} test questions "
                f"(`python -m bench.distill {a}`).", "",
                "| student | accuracy [95% bootstrap] | ECE | train s | eval s |", "|---|---|---|---|---|"]
        out += [f"| {k.replace('_', ' ')} | {r['accuracy']['mean']:.3f} [{r['accuracy']['lo']:.3f}, "
                f"{r['accuracy']['hi']:.3f}] | {r['ece']:.3f} | {r['train_wall_s']:.0f} | {r['eval_wall_s']:.0f} |"
                for k, r in t["rounds"].items()]
        picks = {k: r["picked"] for k, r in t["rounds"].items() if "picked" in r}
        if picks:
            out += ["", "Letters picked: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in picks.items()) + "."]
        if "reference" in t:
            ref = t["reference"]
            out += ["", f"Reference: chance {ref['chance']:.3f}; always one letter " + ", ".join(
                f"{x} {v:.3f}" for x, v in ref["always_one_letter"].items()) + "."]
        curves = {k: r["curve"] for k, r in t["rounds"].items() if len(r.get("curve", [])) > 1}
        if curves:
            out += ["", "Learning curve, test accuracy after each number of epochs (`distill_curve.png`): " + "; ".join(
                f"{k.replace('_', ' ')} " + ", ".join(f"{p['epochs']:g}: {p['accuracy']['mean']:.3f}" for p in c)
                for k, c in curves.items()) + "."]
        diffs = [(k, t[k]) for k in ("multi_minus_before", "multi_minus_response", "response_minus_before") if k in t]
        if diffs:
            out += [""] + ["; ".join(f"{k.replace('_', ' ')} {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]"
                                     for k, v in diffs) + " (paired bootstrap)."]
    return out


def answer_cache(c: dict) -> list[str]:
    w, on, off = c["workload"], c["cache_on"], c["cache_off"]
    sparse, sparse_off = c["cache_on_feedback_20pct"], c["cache_off_feedback_20pct"]
    out = ["### Answer cache (`bench/results/answer_cache.json`)", "",
           f"`selfevolve bench answer-cache`: {w['queries']} queries of {w['data']} (test split), {w['repeats']} of "
           f"them exact repeats of an earlier query's text (repeat rate {w['repeat_rate']}), TTL {w['ttl_s']:.0f} s; "
           "the same stream with the cache off in the same command.", "",
           "| run | hit rate | accuracy of cached answers | accuracy of all answers | cost (USD) |", "|---|---|---|---|---|"]
    for name, r in (("cache on, a verdict on every answer", on), ("cache off, a verdict on every answer", off),
                    ("cache on, verdicts on 20% of answers", sparse), ("cache off, verdicts on 20% of answers", sparse_off)):
        cached = "n/a" if r["accuracy_cached"] is None else f"{r['accuracy_cached']:.3f}"
        out.append(f"| {name} | {r['hit_rate']:.1%} | {cached} | {r['accuracy']:.3f} | {r['cost_usd']:.4f} |")
    return out + ["", f"Cost with the cache, verdicts on every answer: {c['cost_ratio']:.3f} of the cache-off run."]


def tenant_targets(t: dict) -> list[str]:
    targets = ", ".join(f"{k} {v:g}" for k, v in t["targets"].items())
    out = ["### Quality target per tenant (`bench/results/tenant_targets.json`)", "",
           f"`selfevolve bench tenant-targets`: {' + '.join(t['models'])}, {t['test_queries']} test queries after "
           f"{t['warmup_queries']} warm-up ones, split between two tenants by a hash of the query id; targets "
           f"{targets} (`SELFEVOLVE_QUALITY_TARGETS`), audit rate {t['audit_start_rate']:g} for each target's "
           f"first {t['audit_calibration']} audits, then {t['audit_rate']:g}, λ starting at "
           f"{t['start_lambda']:g}; the same stream without targets in the same command. Accuracy and cost are of "
           "each tenant's own test queries, relative to the supervisor on them.", "",
           "| run | tenant | target | achieved (95% bootstrap) | cost ratio | own estimate [95%] | λ at the end | "
           "audits |", "|---|---|---|---|---|---|---|---|"]
    for run, label in (("no_target", "no target"), ("per_tenant", "a target per tenant")):
        for tenant, e in t["runs"][run].items():
            lo, hi = e["achieved_interval"]
            own = (f"{e['estimate']:.3f} [{e['interval'][0]:.3f}, {e['interval'][1]:.3f}] | {e['cost_lambda']:.3g} | "
                   f"{e['audits']}") if "target" in e else "n/a | " + f"{t['start_lambda']:g} | 0"
            out.append(f"| {label} | {tenant} | {e.get('target', 'none')} | {e['achieved']:.3f} [{lo:.3f}, "
                       f"{hi:.3f}] | {e['cost_ratio']:.3f} | {own} |")
    return out


def render(results: Path) -> str:
    lines: list[str] = []
    for name, fn in (("quality", quality), ("tenant_targets", tenant_targets), ("throughput", throughput),
                     ("answer_cache", answer_cache),
                     ("evolution", evolution), ("distill", distill)):
        data = _load(results, name)
        if data is not None:
            lines += fn(data) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    print(render(Path(args[0]) if args else Path("bench/results")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
