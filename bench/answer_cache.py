"""`selfevolve bench answer-cache`: the answer cache's hit rate, the accuracy of cached answers and what it saves.

The shipped serve folds through the in-memory driver (as `bench quality`), on RouterBench-format data: a
stream of test prompts where a share of the queries repeat an earlier prompt word for word (a new query id,
same tenant, same text), posted with gold feedback after delivery, as `bench quality` does (and again with
verdicts on only a fifth of the answers). A verdict on a cached answer names the model whose answer it
reused, so a wrong cached answer is evicted. The same stream
runs with the cache off in the same command: the cost ratio is on identical traffic. Gold never decides:
it is read only to post the verdicts and to judge afterwards. Cite RouterBench (Hu et al., 2024).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.quality import CITATION, catalogue_for
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import recorded
from selfevolve.flow.workload import Workload, from_samples, plan
from selfevolve.routing.embed_cache import embed_all, lookup
from selfevolve.routing.reuse import CACHED
from selfevolve.wire.tenancy import record_key

RESULTS = Path(__file__).resolve().parent / "results" / "answer_cache.json"


def with_repeats(w: Workload, rate: float, seed: int) -> Workload:
    """w's queries where each one after the first is, with probability `rate`, a repeat of an earlier query's
    text (its own id `<id>~r<i>`, the same gold: the same question), at its own event time."""
    rng = random.Random(seed)
    queries, gold = [], dict(w.gold)
    for i, q in enumerate(w.queries):
        if queries and rng.random() < rate:
            src = rng.choice(queries[:max(1, len(queries))])
            base = src["metadata"].get("repeat_of") or src["query_id"]
            q = {**src, "query_id": f"{base}~r{i}",
                 "metadata": {**src["metadata"], "repeat_of": base, "phase": "test"}}
            gold[record_key(q)] = w.gold[record_key({"query_id": base, "tenant": q["tenant"]})]
        queries.append({**q, "ts_ms": i * 1000})
    return Workload(w.name, queries, gold, w.supervisor, w.supervisor_cost)


def feedback_on_delivered(w: Workload, share: float = 1.0):
    """Workload.feedback, plus the verdict on the model a cached answer reused (it called none), for the
    `share` of answers whose users give one (chosen by a hash of the query id: the same in every run)."""
    def verdicts(answer: dict) -> list[dict]:
        digest = hashlib.sha256(record_key(answer).encode()).digest()
        if int.from_bytes(digest[:4], "little") / 2**32 >= share:
            return []
        if answer.get("strategy") != CACHED or not answer.get("model"):
            return w.feedback(answer)
        return w.feedback({**answer, "models_called": [answer["model"]]})
    return verdicts


def run(settings: Settings, catalogue, responder, w: Workload, embed, dim: int, share: float = 1.0) -> dict:
    flow = dataflow.build(settings, catalogue, embed, roles=(dataflow.SERVE,), dim=dim)
    result = driver.replay(flow.driver(responder), w.queries, feedback_on_delivered(w, share), window=1)
    answers = result.of("answer")
    cached = [a for a in answers if a["strategy"] == CACHED]
    judged = [w.judge(a) or 0.0 for a in answers]
    judge_cached = [w.judge(a) or 0.0 for a in cached]
    stats = flow.states["answer_cache"].stats
    return {"queries": len(answers), "cost_usd": round(sum(a["cost_usd"] for a in answers), 6),
            "accuracy": round(float(np.mean(judged)), 4) if judged else None,
            "hits": len(cached), "hit_rate": round(len(cached) / max(1, len(answers)), 4),
            "accuracy_cached": round(float(np.mean(judge_cached)), 4) if judge_cached else None,
            "evictions_feedback": stats.evictions_feedback, "dead_letters": len(result.dead_letters)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve bench answer-cache", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="directory of <task>_<split>.csv files")
    p.add_argument("--repeat-rate", type=float, default=0.2, help="share of queries repeating an earlier text")
    p.add_argument("--limit", type=int, default=2000, help="test rows streamed (before repeats are drawn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    t0 = time.perf_counter()
    settings = Settings.load()
    ds = load_dir(a.data)
    ds.require_responses()
    phased = plan(ds, a.seed, 0, a.limit)
    test = [s for _, s in phased]
    models = list(ds.models)
    supervisor = max(models, key=lambda m: np.mean([s.costs.get(m, 0.0) for s in test]))
    catalogue = catalogue_for(list(ds.split("train").samples), test, models, supervisor)
    w = with_repeats(from_samples(str(a.data), phased, supervisor), a.repeat_rate, a.seed)
    prompts = sorted({q["text"] for q in w.queries})
    vecs = embed_all(settings, prompts)
    embed, dim = lookup(prompts, vecs), vecs.shape[1]
    on = run(settings, catalogue, recorded(ds, catalogue), w, embed, dim)
    off = run(settings.model_copy(update={"answer_cache_size": 0}), catalogue, recorded(ds, catalogue), w, embed, dim)
    # Users who judge only a fifth of their answers: wrong answers stay cached longer.
    sparse = run(settings, catalogue, recorded(ds, catalogue), w, embed, dim, share=0.2)
    sparse_off = run(settings.model_copy(update={"answer_cache_size": 0}), catalogue, recorded(ds, catalogue), w,
                     embed, dim, share=0.2)
    out = {"workload": {"data": str(a.data), "queries": len(w.queries), "repeat_rate": a.repeat_rate,
                        "repeats": sum(1 for q in w.queries if "repeat_of" in q["metadata"]),
                        "ttl_s": settings.answer_cache_ttl_s, "seed": a.seed,
                        "note": "every query stamped 1 s apart in event time; gold posted after each delivery"},
           "cache_on": on, "cache_off": off, "cache_on_feedback_20pct": sparse,
           "cache_off_feedback_20pct": sparse_off,
           "cost_ratio": round(on["cost_usd"] / off["cost_usd"], 4) if off["cost_usd"] else None,
           "seconds": round(time.perf_counter() - t0, 1), "citation": CITATION}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"answer cache on {len(w.queries)} queries ({out['workload']['repeats']} repeats): hit rate "
          f"{on['hit_rate']:.1%}, cached answers {on['accuracy_cached']} accurate (all answers {on['accuracy']}, "
          f"cache off {off['accuracy']}), cost {out['cost_ratio']} of the cache-off run; with verdicts on 20% of "
          f"answers: cached answers {sparse['accuracy_cached']} accurate; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
