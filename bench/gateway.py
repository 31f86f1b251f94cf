"""`selfevolve bench gateway`: the OpenAI-compatible gateway driven by the real `openai` client at a steady
offered rate, against producing straight to Kafka in the same run, on a private stack (loopback only).

Phases per rate, each one query every 1/rate s for --seconds (bounded): straight to Kafka
(bench/throughput_load.py's paced producer and reader), through the gateway (AsyncOpenAI, one request per
query; the gateway in its own process), through the gateway with bare httpx (the same body: what the openai
client itself costs shows), and straight to Kafka again, so the pipeline's drift over the run shows. The gateway's overhead is measured two
ways: the difference of the end-to-end percentiles (gateway minus the mean of the two direct phases), and per
request as the client's wait minus the gateway's own send-to-answer time (the x-selfevolve-pipeline-ms
header): HTTP, authentication, JSON and the openai client's parsing. Replay backend: no model time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from pathlib import Path

from bench.throughput_load import pace_schedule, paced, percentile, query_texts
from selfevolve.config import Settings
from selfevolve.data.routerbench import load_dir
from streams.demo import wait_ready
from streams.stack import Stack, operator_settings

GOALS = {"p50_overhead_ms": 20.0, "p99_overhead_ms": 100.0, "at_rate": 100.0}


async def _one(client, text: str, sid: str, out: dict) -> None:
    """One request, with the openai client or (client an httpx.AsyncClient) a bare POST of the same body."""
    t0 = time.perf_counter()
    body = {"model": "selfevolve/auto", "messages": [{"role": "user", "content": text}], "metadata": {"sample_id": sid}}
    try:
        if hasattr(client, "chat"):
            raw = await client.chat.completions.with_raw_response.create(
                model=body["model"], messages=body["messages"], extra_body={"metadata": body["metadata"]})
            raw.parse()
        else:
            raw = await client.post("chat/completions", json=body)
            raw.raise_for_status()
            raw.json()
    except Exception as e:  # noqa: BLE001 - a failed request is counted by its kind, the run goes on
        out["errors"][type(e).__name__] = out["errors"].get(type(e).__name__, 0) + 1
        return
    ms = (time.perf_counter() - t0) * 1000
    out["latencies_ms"].append(ms)
    pipeline = raw.headers.get("x-selfevolve-pipeline-ms")
    if pipeline is not None:
        out["overhead_ms"].append(ms - float(pipeline))
        out["handler_ms"].append(float(raw.headers["x-selfevolve-gateway-ms"]))


async def through_gateway(url: str, key: str, texts, rate: float, seconds: float, sdk: bool = True) -> dict:
    """One request every 1/rate s for `seconds` with the real AsyncOpenAI client (sdk=False: bare httpx, to
    tell the client's own cost from the gateway's), then wait for every answer."""
    import httpx
    import openai

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000), timeout=180,
                             base_url=url + "/", headers={"authorization": f"Bearer {key}"})
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, http_client=http) if sdk else http
    out: dict = {"latencies_ms": [], "overhead_ms": [], "handler_ms": [], "errors": {}}
    tasks, behind = [], []
    t0 = time.perf_counter()
    for at in pace_schedule(rate, seconds):
        wait = t0 + at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        behind.append(max(0.0, -wait) * 1000)
        text, sid, _ = next(texts)
        tasks.append(asyncio.create_task(_one(client, text, sid, out)))
    offered_s = time.perf_counter() - t0
    await asyncio.gather(*tasks)
    span = time.perf_counter() - t0
    await http.aclose()
    lat, over = out["latencies_ms"], out["overhead_ms"]
    return {"queries": len(tasks), "answers": len(lat), "errors": out["errors"], "seconds": span,
            "qps": len(lat) / span if span else 0.0, "offered_qps": rate,
            "achieved_offered_qps": len(tasks) / offered_s if offered_s else 0.0,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=None),
            "overhead_p50_ms": percentile(over, 50), "overhead_p99_ms": percentile(over, 99),
            # Of that overhead, what the gateway's handler spent itself (auth, parsing, encoding, shaping).
            "handler_p50_ms": percentile(out["handler_ms"], 50), "handler_p99_ms": percentile(out["handler_ms"], 99),
            "send_behind_p99_ms": percentile(behind, 99)}


def _wait_gateway(settings: Settings) -> None:
    """Wait for the gateway `selfevolve up` started (its own process and Kafka principal, as deployed, so the
    load's client does not share its GIL)."""
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://{settings.gateway_host}:{settings.gateway_port}/ready", timeout=2).json()["ready"]:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the gateway did not become ready; see {settings.home / 'logs' / 'gateway.log'}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfevolve bench gateway", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[20.0, GOALS["at_rate"]],
                    help="offered requests per second, one run of the three phases each (default: one the "
                    "stack sustains on a shared 2-core machine, and the goal's)")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each paced phase")
    ap.add_argument("--warmup", type=int, default=200, help="windowed replay with feedback first")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--port", type=int, default=19492, help="the private broker's; the others follow it")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gateway.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the private stack's folder (logs, broker data)")
    return ap


def _phases(settings: Settings, texts, rate: float, args, url: str, key: str) -> dict:
    out = {}
    for name in ("direct", "gateway", "gateway_httpx", "direct_after"):
        print(f"[gateway] {name}: {rate:g} req/s for {args.seconds:g} s", flush=True)
        if name.startswith("gateway"):
            out[name] = asyncio.run(through_gateway(url, key, texts, rate, args.seconds, sdk=name == "gateway"))
        else:
            out[name] = asyncio.run(paced(settings, texts, f"{name}-{rate:g}", rate, args.seconds))
        print(f"[gateway] {name}: {out[name]['answers']} answers, p50 {out[name]['p50_ms'] or 0:.1f} ms, p99 "
              f"{out[name]['p99_ms'] or 0:.1f} ms", flush=True)
    return out


def summarize(ph: dict) -> dict:
    """Overheads: the gateway's percentiles against the mean of the two direct phases, and per request."""
    d50 = (ph["direct"]["p50_ms"] + ph["direct_after"]["p50_ms"]) / 2
    d99 = (ph["direct"]["p99_ms"] + ph["direct_after"]["p99_ms"]) / 2
    g = ph["gateway"]
    over = {"p50_vs_direct_ms": g["p50_ms"] - d50, "p99_vs_direct_ms": g["p99_ms"] - d99,
            "per_request_p50_ms": g["overhead_p50_ms"], "per_request_p99_ms": g["overhead_p99_ms"],
            "in_handler_p50_ms": g["handler_p50_ms"], "in_handler_p99_ms": g["handler_p99_ms"]}
    h = ph["gateway_httpx"]
    over.update(httpx_per_request_p50_ms=h["overhead_p50_ms"], httpx_per_request_p99_ms=h["overhead_p99_ms"],
                httpx_p50_vs_direct_ms=h["p50_ms"] - d50 if h["p50_ms"] is not None else None)
    met = {"p50": over["per_request_p50_ms"] is not None and over["per_request_p50_ms"] <= GOALS["p50_overhead_ms"],
           "p99": over["per_request_p99_ms"] is not None and over["per_request_p99_ms"] <= GOALS["p99_overhead_ms"]}
    return {"overhead": over, "goals_met_per_request": met}


def main(argv: list[str] | None = None) -> int:
    from bench.throughput import bench_settings
    from infra.kafka.security import add_tenant
    from streams.gateway_keys import create_key
    from streams.stack_replay import replay

    args = _parser().parse_args(argv)
    t_start = time.perf_counter()
    settings, data, note = bench_settings(args)
    # Serve workers listen from port + 20 up (bench_settings): the gateway above them.
    settings = settings.model_copy(update={"gateway_port": args.port + 30, "gateway_budget_usd_day": 1e9,
                                           "gateway_rate_per_min": 1e9, "gateway_timeout_s": 300.0})
    ds = load_dir(data)
    pool = [(s.prompt, s.sample_id) for s in (ds.split("test").samples or ds.samples)]
    stack = Stack(settings)
    load = {"start": list(os.getloadavg())}
    stack.up()
    settings = operator_settings(settings)
    try:
        wait_ready(settings)
        add_tenant(settings, "bench")
        key, _ = create_key(settings, "bench")
        if args.warmup:
            asyncio.run(replay(settings, data, warmup=args.warmup, limit=0, window=200, seed=args.seed))
        _wait_gateway(settings)
        url = f"http://{settings.gateway_host}:{settings.gateway_port}/v1"
        texts = query_texts(pool, 0.0, "gw", args.seed)
        runs = [{"rate": r, **summarize(ph), "phases": ph}
                for r in args.rates for ph in [_phases(settings, texts, r, args, url, key)]]
    finally:
        stack.down()
    load["end"] = list(os.getloadavg())
    out = {"goals": GOALS, "runs": runs, "seconds_per_phase": args.seconds,
           "workload": {"data": str(data), "pool": len(pool), "backend": "replay (recorded answers, no model time)",
                        "client": "openai.AsyncOpenAI, one request per query, max_retries=0", **note,
                        "machine": f"{os.cpu_count()} CPU cores shared with other work"},
           "load_avg": load, "runtime_s": time.perf_counter() - t_start}
    if not args.keep:
        shutil.rmtree(settings.home, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    for run in runs:
        o = run["overhead"]
        print(f"[gateway] {run['rate']:g} req/s: overhead per request p50 {o['per_request_p50_ms']:.1f} ms, p99 "
              f"{o['per_request_p99_ms']:.1f} ms (in the handler p50 {o['in_handler_p50_ms']:.1f} ms); end to end "
              f"vs direct p50 {o['p50_vs_direct_ms']:+.1f} ms, p99 {o['p99_vs_direct_ms']:+.1f} ms")
    print(f"[gateway] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
