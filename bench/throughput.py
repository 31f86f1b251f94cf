"""`selfevolve bench throughput`: the full pipeline's rate on traffic whose texts never repeat, its repeat
curve, latency at a steady half-maximum load, and the broker and embedding baselines, all in one run.

Workload: each query is a recorded RouterBench prompt (test split) with a first line no other query carries,
answered by its `sample_id` through the replay backend (the recorded answer and cost: no model time). The
stack is selfevolve's own (a KRaft broker, the serve and history stream workers, one model worker) on this
machine; the bench's producer and reader run beside it. Phases: a warm-up with feedback, a short probe of the
rate, the distinct run (a bounded window in flight for --seconds), repeat rates 0.5 and 0.95 (a repeat is an
earlier query's exact text), a paced run at half the distinct rate, the broker round trip; then scaling: the
same distinct traffic on 1, 2 and 4 serve workers in one consumer group (the supervisor restarted with
--serve-workers N on the same broker, history and model worker); then, with the stack down, the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.throughput_baselines import embed_rate, roundtrip
from bench.throughput_load import paced, query_texts, saturate
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from selfevolve.errors import SelfEvolveError
from selfevolve.wire.codec import Codec
from streams.stack import Stack, broker_for, operator_settings, role_of, wait_ready
from streams.stack_replay import replay

PAPER_QPS = 285
GOALS = {"distinct_qps": PAPER_QPS, "sustained_p50_ms": 50, "sustained_p99_ms": 250, "pipeline_over_embedding": 0.7}
WORKERS = {"serve": 1, "history": 1, "model": 1}
SCALE_LIMIT = ("every serve worker runs on the same cores as the broker, the history worker, the model worker "
               "and the bench's own producer and reader; more serve workers add no core, so once the stack's "
               "processes fill the machine's cores a worker only splits the same CPU (and each worker still folds "
               "the whole history topic and pays its own poll, transaction and rebalance overhead)")


class Meter:
    """Load average after each phase, and the CPU seconds each stack process (and this one) spent in one."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.load = stack, {"cores": os.cpu_count(), "start": list(os.getloadavg())}
        self.cpu: dict[str, dict[str, float]] = {}

    def _procs(self) -> dict[str, float]:
        tick = os.sysconf("SC_CLK_TCK")
        pids = {p.stem: int(p.read_text()) for p in self.stack.pids.glob("*.pid")}
        pids["broker"] = broker_for(self.stack.settings).pid()
        out = {}
        for name, pid in pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # With its reaped children's (the scorer's code-check sandboxes): their CPU is the query's too.
                out[name] = sum(int(f) for f in fields[11:15]) / tick
            except (OSError, TypeError, IndexError, ValueError):
                continue
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["bench"] = ru.ru_utime + ru.ru_stime
        return out

    def phase(self, name: str, before: dict[str, float] | None = None) -> dict[str, float]:
        self.load[name] = list(os.getloadavg())
        now = self._procs()
        if before is not None:
            self.cpu[name] = {k: round(v - before.get(k, 0.0), 2) for k, v in now.items() if k in before}
        return now


def profile(stack: Stack, out: Path, seconds: float) -> list[subprocess.Popen]:
    """py-spy (on PATH or $PY_SPY) sampling each stream worker for the distinct run, into out/<name>.txt
    (collapsed stacks, on-CPU samples only, every thread); nothing when py-spy is not installed."""
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not exe:
        print("[throughput] --profile: py-spy not found (pip install py-spy, or set PY_SPY)", flush=True)
        return []
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (p.stem for p in stack.pids.glob("*.pid")) if role_of(n) in ("serve", "history")]
    return [subprocess.Popen([exe, "record", "--pid", str(stack.pid(n)), "--duration", str(int(seconds)),
                              "--rate", "200", "--format", "raw", "--threads", "--nonblocking",
                              "--output", str(out / f"{n}.txt")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for n in names if stack.pid(n)]


def _texts(pool, rate: float, run: str, seed: int):
    return query_texts(pool, rate, run, seed)


async def drive(settings: Settings, pool: list[tuple[str, str]], args, meter: Meter) -> dict:
    """The measured phases on the running stack, each on texts of its own run tag (no text crosses phases)."""
    run = uuid.uuid4().hex[:6]
    probe = await saturate(settings, _texts(pool, 0.0, f"{run}p", args.seed), f"{run}p", args.probe_seconds, 256)
    window = min(20_000, max(256, math.ceil(probe["qps"] * 3)))
    print(f"[throughput] probe: {probe['qps']:.1f} q/s on distinct texts; window {window}", flush=True)
    cpu0 = meter.phase("probe", None)
    spies = profile(meter.stack, args.profile, args.seconds) if args.profile else []
    distinct = await saturate(settings, _texts(pool, 0.0, f"{run}d", args.seed), f"{run}d", args.seconds, window)
    meter.phase("distinct", cpu0)
    for spy in spies:
        spy.wait(timeout=60)
    print(f"[throughput] distinct: {distinct['qps']:.1f} q/s over {distinct['seconds']:.0f}s "
          f"({distinct['answers']} answers)", flush=True)
    curve = [{"repeat_rate": 0.0, "qps": distinct["qps"], "from": "the distinct run"}]
    for rate in (0.5, 0.95):
        tag = f"{run}r{int(rate * 100)}"
        cpu0 = meter.phase(f"repeat_{rate}", None)
        r = await saturate(settings, _texts(pool, rate, tag, args.seed + 1), tag, args.curve_seconds, window,
                           gold=args.gold)
        meter.phase(f"repeat_{rate}", cpu0)
        curve.append({"repeat_rate": rate, **{k: r[k] for k in ("qps", "queries", "answers", "seconds", "p50_ms",
                                                                 "p99_ms", "answer_cache_hit_rate", "answer_cache",
                                                                 "strategies") if k in r}})
        print(f"[throughput] repeat rate {rate}: {r['qps']:.1f} q/s", flush=True)
    offered = max(1.0, round(distinct["qps"] / 2, 1))
    cpu0 = meter.phase("sustained_start", None)
    sustained = await paced(settings, _texts(pool, 0.0, f"{run}s", args.seed + 2), f"{run}s", offered,
                            args.sustained_seconds)
    meter.phase("sustained", cpu0)
    print(f"[throughput] sustained at {offered} q/s: p50 {sustained['p50_ms']:.0f} ms, "
          f"p99 {sustained['p99_ms']:.0f} ms", flush=True)
    cpu0 = meter.phase("light_start", None)
    light = await paced(settings, _texts(pool, 0.0, f"{run}l", args.seed + 3), f"{run}l", args.light_qps,
                        args.light_seconds)
    meter.phase("light", cpu0)
    print(f"[throughput] light load {args.light_qps} q/s: p50 {light['p50_ms']:.0f} ms", flush=True)
    return {"probe": probe, "distinct": distinct, "repeat_curve": curve, "sustained": sustained, "light": light}


async def scale_point(settings: Settings, pool, args, n: int, window: int, meter: Meter) -> dict:
    """Distinct traffic on n serve workers: a short settling run first (the group's rebalance, each worker's
    catch-up on the history topic), then args.scale_seconds measured, with each process's CPU."""
    tag = f"{uuid.uuid4().hex[:6]}w{n}"
    await saturate(settings, _texts(pool, 0.0, f"{tag}s", args.seed + 10 + n), f"{tag}s", args.probe_seconds, window)
    phase = f"scale_{n}"
    cpu0 = meter.phase(phase, None)
    r = await saturate(settings, _texts(pool, 0.0, tag, args.seed + 10 + n), tag, args.scale_seconds, window)
    meter.phase(phase, cpu0)
    cpu = meter.cpu.get(phase, {})
    serve = sum(v for k, v in cpu.items() if role_of(k) == "serve")
    out = {"serve_workers": n, "qps": r["qps"], **{k: r[k] for k in ("answers", "duplicates", "seconds", "p50_ms",
                                                                        "p99_ms")},
           "cores_busy": round(sum(cpu.values()) / r["seconds"], 2) if r["seconds"] else None,
           "serve_cpu_ms_per_query": round(serve * 1000 / max(1, r["answers"]), 2),
           "cpu_ms_per_query": _per_query(meter, phase, r), "load_1m": meter.load[phase][0]}
    print(f"[throughput] {n} serve worker(s): {r['qps']:.1f} q/s, {out['cores_busy']} cores busy", flush=True)
    return out


def scaling(stack: Stack, settings: Settings, pool, args, window: int, meter: Meter) -> list[dict]:
    """Each count of args.scaling in turn: the supervisor restarted with that many serve workers (the broker,
    its topics and the history they hold stay), ready on every worker, then scale_point."""
    points: list[dict] = []
    running = 1
    for n in args.scaling:
        try:
            if n != running:
                stack.down(with_broker=False)
                stack.up(serve_workers=n)
                running = n
                wait_ready(settings, n, timeout=args.ready_timeout)
            points.append(asyncio.run(scale_point(settings, pool, args, n, window, meter)))
        except (SelfEvolveError, TimeoutError, OSError) as e:  # report the point, keep the others
            points.append({"serve_workers": n, "qps": None, "why": f"failed: {e}"})
            print(f"[throughput] {n} serve workers failed: {e}", flush=True)
    one = next((p["qps"] for p in points if p["serve_workers"] == 1 and p["qps"]), None)
    for p in points:
        p["vs_one_worker"] = p["qps"] / one if one and p["qps"] is not None else None
    return points


def baselines(settings: Settings, pool, args) -> dict:
    """With the stack down: the configured embedder alone on distinct texts (and MiniLM when it is not)."""
    texts = [t for t, _, _ in _take(_texts(pool, 0.0, "embed", args.seed), args.embed_texts)]
    out = {"embedding": embed_rate(settings, texts, settings.router_batch_size, args.embed_seconds)}
    if settings.embedder != "minilm" and args.minilm:
        minilm = settings.model_copy(update={"embedder": "minilm"})
        out["embedding_minilm"] = embed_rate(minilm, texts, minilm.router_batch_size, args.embed_seconds)
    for k, v in out.items():
        print(f"[throughput] {k} alone ({v['embedder']}): {v['texts_per_s']:.1f} distinct texts/s", flush=True)
    return out


def _take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def workload(settings: Settings, data: Path, pool_size: int, load: dict) -> dict:
    cores, avg = load.get("cores"), load.get("distinct", load["start"])[0]
    return {
        "queries": f"RouterBench prompts of the test split of {data} ({pool_size} prompts, cycled in a shuffled "
                   "order), each made unique by a first line no other query carries (`[<run>-<n>]`), tenant `bench`",
        "repeats": "repeat rate r: an evenly spread fraction r of the queries carries the exact text of an earlier "
                   "query of the same run and tenant: the answer cache answers it (no model, cost 0) once that "
                   "earlier query was delivered, and the embedder's exact-text cache serves its vector; rate 0: "
                   "every text is new (the distinct, sustained and baseline figures)",
        "backend": "replay: each query is answered by its sample_id with the recorded answer and cost; no model "
                   "time, so every figure is the pipeline's own overhead",
        "stack": "one Kafka KRaft broker, one serve stream worker, one history stream worker, one model worker "
                 f"(replay), embedder {settings.embedder!r}; the bench's producer and reader on the same machine",
        "machine": f"{cores} CPU cores shared with other work (1-minute load {avg:.1f} during the distinct run)",
    }


def _per_query(meter: Meter, phase: str, r: dict) -> dict[str, float]:
    return {k: round(v * 1000 / max(1, r["answers"]), 2) for k, v in meter.cpu.get(phase, {}).items()}


def assemble(settings: Settings, ph: dict, rt: dict, base: dict, meter: Meter, args, extra: dict) -> dict:
    d, s = ph["distinct"], ph["sustained"]
    emb = base["embedding"]
    ratios = {"qps_over_broker": d["qps"] / rt["msgs_per_s"], "qps_over_embedding": d["qps"] / emb["texts_per_s"]}
    if "embedding_minilm" in base:
        ratios["qps_over_minilm_embedding"] = d["qps"] / base["embedding_minilm"]["texts_per_s"]
    reached = {"distinct_qps": d["qps"] >= GOALS["distinct_qps"],
               "sustained_p50_ms": s["p50_ms"] is not None and s["p50_ms"] <= GOALS["sustained_p50_ms"],
               "sustained_p99_ms": s["p99_ms"] is not None and s["p99_ms"] <= GOALS["sustained_p99_ms"],
               "pipeline_over_embedding": ratios["qps_over_embedding"] >= GOALS["pipeline_over_embedding"]}
    distinct = {**d, "workers": WORKERS, "cpu_ms_per_query": _per_query(meter, "distinct", d),
                "latency_note": f"saturated: {d['window']} queries kept in flight, so these latencies are mostly "
                                "queueing; `sustained` has latency under a steady load"}
    return {"qps": d["qps"], "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"], "router_p50_ms": s.get("router_p50_ms"),
            "embedder": {"ran": settings.embedder, "id": emb["embedder"], "note": extra["note"]},
            "distinct": distinct, "repeat_curve": ph["repeat_curve"],
            "scaling": ph["scaling"], "scaling_limit": scaling_limit(ph["scaling"], meter.load.get("cores")),
            "sustained": {**s, "cpu_ms_per_query": _per_query(meter, "sustained", s)},
            "light_load": {**ph["light"], "cpu_ms_per_query": _per_query(meter, "light", ph["light"]),
                           "note": "a paced trickle: the pipeline's latency floor, with no queue"},
            "probe": ph["probe"], "baselines": {"broker_roundtrip": rt, **base}, "ratios": ratios,
            "goals": {**GOALS, "reached": reached}, "workload": workload(settings, extra["data"], extra["pool"],
                                                                       meter.load),
            "load_avg": meter.load, "cpu_s": meter.cpu, "paper_claim_qps": PAPER_QPS, "warmup": args.warmup,
            "data": str(extra["data"]), "seed": args.seed,
            "args": {k: str(v) for k, v in vars(args).items() if k != "gold"}}


def scaling_limit(points: list[dict], cores: int | None) -> str:
    """What the scaling points show and what limits them: the cores the stack kept busy at each count."""
    busy = "; ".join(f"{p['serve_workers']} worker(s): {p['qps']:.1f} q/s with {p['cores_busy']} of {cores} cores "
                     f"busy (1-minute load {p['load_1m']:.1f})" for p in points if p.get("qps") is not None)
    return f"{busy}. Limit: {SCALE_LIMIT}." if busy else f"not measured. Limit: {SCALE_LIMIT}."


def bench_settings(args) -> tuple[Settings, Path, dict]:
    """Settings of a private stack (its own home, ports and topic prefix), the data, and which embedder runs."""
    from selfevolve.routing.embed import static_dir

    base = Settings.load()
    data = args.data or (base.data_dir / "routerbench-0shot")
    if not data.exists():
        data = base.replay_dir
    home = Path(tempfile.mkdtemp(prefix="selfevolve-bench-"))
    # Serve worker i listens on web_port + i: above the other ports, so 1, 2 and 4 workers all fit.
    settings = Settings(home=home, kafka_bootstrap=f"127.0.0.1:{args.port}", web_port=args.port + 20,
                        history_web_port=args.port + 12, sql_port=args.port + 11, replay_dir=data,
                        topic_prefix="bench.")
    note = {"note": f"settings.embedder {settings.embedder!r} (SELFEVOLVE_EMBEDDER or its default)"}
    if settings.embedder == "static" and not (static_dir(settings) / "build.json").exists():
        settings = settings.model_copy(update={"embedder": "minilm"})
        note = {"note": "the static embedder is not built (`make embeddings`): ran MiniLM instead"}
    return settings, data, note


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfevolve bench throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the distinct-text run")
    ap.add_argument("--curve-seconds", type=float, default=None, help="each repeat-rate run (default: seconds/2)")
    ap.add_argument("--sustained-seconds", type=float, default=None, help="the paced run (default: 2/3 of seconds)")
    ap.add_argument("--light-qps", type=float, default=2.0, help="rate of the light-load (latency floor) run")
    ap.add_argument("--light-seconds", type=float, default=10.0)
    ap.add_argument("--probe-seconds", type=float, default=8.0, help="the short run that sizes the window")
    ap.add_argument("--warmup", type=int, default=400, help="windowed replay with feedback first")
    ap.add_argument("--scaling", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 2, 4],
                    metavar="N,N,...", help="serve-worker counts of the scaling runs ('' for none)")
    ap.add_argument("--scale-seconds", type=float, default=None, help="each scaling run (default: seconds/2)")
    ap.add_argument("--scaling-only", action="store_true", help="only the scaling runs (after the warm-up)")
    ap.add_argument("--window", type=int, default=256, help="queries in flight in the --scaling-only runs")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="waiting for N serve workers' /ready")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="sample the stream workers with py-spy during the distinct run, into DIR")
    ap.add_argument("--embed-seconds", type=float, default=10.0, help="time budget of each embedding baseline")
    ap.add_argument("--embed-texts", type=int, default=20_000)
    ap.add_argument("--no-minilm", dest="minilm", action="store_false", help="skip the MiniLM embedding baseline")
    ap.add_argument("--roundtrip", type=int, default=20_000, help="messages of the bare broker round trip")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--port", type=int, default=19392)
    ap.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the private stack's folder (logs, broker data)")
    return ap


def _scaling_only(stack: Stack, settings: Settings, pool, args, meter: Meter) -> int:
    """--scaling-only: the scaling runs alone (after the warm-up), into --out; no other phase, no baseline."""
    points = scaling(stack, settings, pool, args, args.window, meter)
    out = {"scaling": points, "scaling_limit": scaling_limit(points, meter.load.get("cores")),
           "workload": "distinct texts (repeat rate 0), replay backend, the full pipeline; each point: a settling "
                       f"run of --probe-seconds, then --scale-seconds with {args.window} queries in flight",
           "load_avg": meter.load, "cpu_s": meter.cpu,
           "args": {k: str(v) for k, v in vars(args).items() if k != "gold"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(out["scaling_limit"], flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.curve_seconds = args.curve_seconds or max(10.0, args.seconds / 2)
    args.sustained_seconds = args.sustained_seconds or max(10.0, args.seconds * 2 / 3)
    args.scale_seconds = args.scale_seconds or max(10.0, args.seconds / 2)
    t_start = time.perf_counter()
    settings, data, note = bench_settings(args)
    ds = load_dir(data)
    pool = [(s.prompt, s.sample_id) for s in (ds.split("test").samples or ds.samples)]
    args.gold = {s.sample_id: s.correct for s in ds.samples}  # grades the answer cache's answers
    codec = Codec.from_dir()
    payloads = [codec.encode("query", {"query_id": f"rt{i}", "text": t, "tenant": "bench", "ts_ms": 0,
                                       "metadata": {"sample_id": sid}})
                for i, (t, sid, _) in enumerate(_take(_texts(pool, 0.0, "rt", args.seed), args.roundtrip))]
    stack = Stack(settings)
    print(f"[throughput] {len(pool)} prompts from {data}, embedder {settings.embedder}; stack under "
          f"{settings.home}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    stack.up(serve_workers=1)
    meter = Meter(stack)
    settings = operator_settings(settings)  # with Kafka security on: the bench broker's admin
    try:
        wait_ready(settings, 1)
        if args.warmup:
            r = asyncio.run(replay(settings, data, warmup=args.warmup, limit=0, window=200, seed=args.seed))
            print(f"[throughput] warm-up: {r.answers} answered with feedback", flush=True)
        if args.scaling_only:
            return _scaling_only(stack, settings, pool, args, meter)
        phases = asyncio.run(drive(settings, pool, args, meter))
        rt = asyncio.run(roundtrip(settings, payloads))
        print(f"[throughput] bare broker round trip: {rt['msgs_per_s']:.0f} msg/s", flush=True)
        phases["scaling"] = scaling(stack, settings, pool, args, phases["distinct"]["window"], meter)
    finally:
        stack.down()
        if args.scaling_only and not args.keep:  # the full run removes it after its baselines
            shutil.rmtree(settings.home, ignore_errors=True)
    base = baselines(settings, pool, args)
    meter.load["end"] = list(os.getloadavg())
    out = assemble(settings, phases, rt, base, meter, args, {**note, "data": data, "pool": len(pool)})
    out["runtime_s"] = time.perf_counter() - t_start
    if not args.keep:
        shutil.rmtree(settings.home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    from bench.report import throughput as render

    print("\n".join(render(out)))
    return 0
