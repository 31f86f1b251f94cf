"""The pure parts of `selfevolve bench throughput`: its query texts, its pacing, its percentiles, its report."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.throughput_load import is_repeat, pace_schedule, percentile, query_texts

POOL = [(f"prompt {i}?", f"s{i}") for i in range(7)]


def _take(rate: float, n: int, run: str = "t", seed: int = 0):
    return list(itertools.islice(query_texts(POOL, rate, run, seed), n))


def test_repeat_rate_zero_makes_every_text_unique_even_past_the_pool():
    got = _take(0.0, 50)  # 50 queries from 7 prompts: the tag line makes each one new
    assert len({t for t, _, _ in got}) == 50 and not any(r for _, _, r in got)
    assert all(t.endswith(p) for t, sid, _ in got for p, s in POOL if s == sid)  # the prompt, last


@pytest.mark.parametrize("rate", [0.5, 0.95, 0.123])
@pytest.mark.parametrize("n", [1, 19, 200, 1000])
def test_repeat_fraction_is_exact_in_every_prefix(rate, n):
    got = _take(rate, n)
    repeats = sum(r for _, _, r in got)
    assert repeats == int(n * round(rate * 1000) // 1000)
    assert len({t for t, _, _ in got}) == n - repeats  # a fresh text is new; a repeat adds none


def test_a_repeat_is_an_earlier_texts_exact_copy_with_its_sample_id():
    got = _take(0.95, 400)
    seen: dict[str, str] = {}
    for text, sid, rep in got:
        if rep:
            assert seen[text] == sid
        else:
            assert text not in seen
            seen[text] = sid
    assert not got[0][2]


def test_runs_and_seeds_do_not_share_texts():
    a, b = {t for t, _, _ in _take(0.0, 30, "a")}, {t for t, _, _ in _take(0.0, 30, "b")}
    assert not a & b


def test_is_repeat_rejects_rates_out_of_range():
    for bad in (1.0, -0.1, 2):
        with pytest.raises(ValueError):
            is_repeat(0, bad)
    with pytest.raises(ValueError):
        next(query_texts([], 0.0, "x"))


def test_pace_schedule_is_steady_and_sized():
    s = pace_schedule(40, 2.5)
    assert len(s) == 100 and s[0] == 0 and s[-1] == pytest.approx(99 / 40)
    assert np.allclose(np.diff(s), 1 / 40)
    assert len(pace_schedule(0.5, 10)) == 5
    assert pace_schedule(0, 10) == [] and pace_schedule(10, 0) == []


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = list(np.random.default_rng(q).exponential(10, size=137))
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_small_cases():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5


def _fake_run():
    from types import SimpleNamespace

    from bench.throughput import assemble

    def run(qps, p50, p99, **kw):
        return {"queries": 10, "answers": 10, "duplicates": 0, "seconds": 61.0, "qps": qps, "p50_ms": p50,
                "p99_ms": p99, "max_ms": p99, "window": 256, **kw}

    phases = {"probe": run(50, 1, 2), "distinct": run(123.4, 2000, 4000),
              "repeat_curve": [{"repeat_rate": 0.0, "qps": 123.4}, {"repeat_rate": 0.5, "qps": 150.0},
                               {"repeat_rate": 0.95, "qps": 300.0}],
              "sustained": run(61.7, 12.0, 80.0, offered_qps=61.7, router_p50_ms=0.4),
              "light": run(2.0, 30.0, 60.0, offered_qps=2.0),
              "scaling": [{"serve_workers": 1, "qps": 100.0, "cores_busy": 1.6, "load_1m": 3.0, "vs_one_worker": 1.0},
                          {"serve_workers": 2, "qps": 130.0, "cores_busy": 1.9, "load_1m": 3.5, "vs_one_worker": 1.3},
                          {"serve_workers": 4, "qps": None, "why": "failed: not ready"}]}
    emb = {"embedder": "static256", "texts": 9, "batch": 128, "texts_per_s": 1000.0}
    base = {"embedding": emb, "embedding_minilm": {**emb, "embedder": "minilm128", "texts_per_s": 25.0}}
    meter = SimpleNamespace(load={"cores": 2, "start": [1.0, 1, 1], "distinct": [3.5, 2, 1]},
                            cpu={"distinct": {"streams": 1.0, "broker": 0.5}})
    args = SimpleNamespace(seconds=60.0, warmup=400, seed=0)
    settings = SimpleNamespace(embedder="static")
    return assemble(settings, phases, {"msgs_per_s": 9000.0}, base, meter, args,
                    {"note": "n", "data": "d", "pool": 7})


def test_the_result_has_the_issue_keys_and_never_fakes_a_scaling_point():
    out = _fake_run()
    assert {"qps", "p50_ms", "p99_ms", "workers"} <= set(out["distinct"])
    assert [p["repeat_rate"] for p in out["repeat_curve"]] == [0.0, 0.5, 0.95]
    assert [(p["serve_workers"], p["qps"]) for p in out["scaling"]] == [(1, 100.0), (2, 130.0), (4, None)]
    assert out["scaling"][2]["why"].startswith("failed")  # a point that did not run says so, never a number
    assert "2 worker(s): 130.0 q/s with 1.9 of 2 cores busy" in out["scaling_limit"]
    assert "no core" in out["scaling_limit"]
    assert out["distinct"]["workers"] == {"serve": 1, "history": 1, "model": 1}
    assert {"offered_qps", "p50_ms", "p99_ms"} <= set(out["sustained"])
    assert out["ratios"]["qps_over_embedding"] == pytest.approx(0.1234)
    assert out["ratios"]["qps_over_minilm_embedding"] == pytest.approx(123.4 / 25)
    assert out["goals"]["reached"] == {"distinct_qps": False, "sustained_p50_ms": True, "sustained_p99_ms": True,
                                       "pipeline_over_embedding": False}
    assert out["distinct"]["cpu_ms_per_query"] == {"streams": 100.0, "broker": 50.0}  # 10 answers
    assert out["light_load"]["offered_qps"] == 2.0
    assert "2 CPU cores" in out["workload"]["machine"] and "no model" in out["workload"]["backend"]


def test_the_report_quotes_the_distinct_figure_first():
    from bench.report import throughput

    lines = [line for line in throughput(_fake_run()) if line.startswith("| ") and "---" not in line][1:]
    assert "distinct" in lines[0] and "**123.4**" in lines[0]
    assert "0.5: 150.0 q/s; 0.95: 300.0 q/s" in "\n".join(lines)
    assert "| queries per second by serve workers, distinct texts | 1: 100.0 q/s; 2: 130.0 q/s |" in lines
    assert any(line.startswith("| 4 serve workers | failed") for line in lines)
    assert "| CPU ms per distinct query, by process (serve 100.0, broker 50.0) | 150.0 ms |" in lines
    assert any("light 2 q/s" in line and "30 ms / 60 ms" in line for line in lines)


def test_the_answer_caches_hits_are_counted_and_graded_apart():
    from bench.throughput_load import LoadResult, cache_accuracy

    r = LoadResult(answered=4, seconds=1.0, latencies_ms=[1.0] * 4)
    r.strategies.update({"cached": 1, "weak_first": 3})
    assert r.as_dict()["answer_cache_hit_rate"] == 0.25 and r.as_dict()["strategies"]["cached"] == 1
    gold = {"s1": {"m": 1.0}, "s2": {"m": 0.0, "n": 1.0}}
    graded = [("cached", "m", "s1"), ("cached", "m", "s2"), ("direct", "n", "s2"), ("direct", "x", "s9")]
    assert cache_accuracy(graded, gold) == {"cached": {"answers": 2, "accuracy": 0.5},
                                            "fresh": {"answers": 2, "accuracy": 1.0},
                                            "fresh_same_samples": {"answers": 1, "accuracy": 1.0}}
    assert cache_accuracy([], gold)["cached"] == {"answers": 0, "accuracy": None}
    assert "answer_cache_hit_rate" not in LoadResult().as_dict()
