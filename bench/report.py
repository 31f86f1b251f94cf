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
    out = ["### Routing quality (`bench/results/quality.json`, `quality.png`)", "",
           "`selfevolve bench quality --data ../shared/data/routerbench-0shot --lambdas 0 0.02 0.05 0.1 0.2 0.5`: "
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
    return out


def throughput(t: dict) -> list[str]:
    b = t["baselines"]
    return ["### Throughput (`bench/results/throughput.json`)", "",
            f"`selfevolve bench throughput --n {t['n']}`: a {t['warmup']}-query warm-up with feedback, then all "
            f"{t['n']} queries produced at once through the whole pipeline (replay backend).", "",
            "| measure | value |", "|---|---|",
            f"| end-to-end queries per second | {t['qps']:.1f} |",
            f"| p50 / p99 produce-to-answer (an open-loop burst: mostly queueing) | {t['p50_ms'] / 1000:.0f} s / "
            f"{t['p99_ms'] / 1000:.0f} s |",
            f"| router decision time, p50 (a query's share of its batch, after the embedding) | "
            f"{t['router_p50_ms']:.2f} ms |",
            f"| distinct query texts among the {t['n']} | {t['distinct_texts']} |",
            f"| baseline: bare produce-to-consume on the same broker | {b['broker_roundtrip']['msgs_per_s']:.0f} msg/s |",
            f"| baseline: MiniLM embedding alone, distinct texts (batches of 64) | "
            f"{b['embedding']['texts_per_s']:.1f} texts/s |",
            *([f"| baseline: the stream's own texts through the embedder's exact-text cache (hit rate "
               f"{b['embedding']['stream_cache_hit_rate']:.0%}) | {b['embedding']['stream_texts_per_s']:.1f} texts/s |"]
              if "stream_texts_per_s" in b["embedding"] else []),
            f"| pipeline / embedding baseline (distinct texts) | {t['ratios']['qps_over_embedding']:.2f} |",
            *([f"| pipeline / cached embedding baseline | {t['ratios']['qps_over_cached_embedding']:.2f} |"]
              if "qps_over_cached_embedding" in t["ratios"] else []),
            f"| pipeline / broker baseline | {t['ratios']['qps_over_broker']:.4f} |"]


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


def render(results: Path) -> str:
    lines: list[str] = []
    for name, fn in (("quality", quality), ("throughput", throughput), ("evolution", evolution),
                     ("distill", distill)):
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
