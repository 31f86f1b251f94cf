"""The `selfevolve` command: run the stack, send queries, read answers, query history, replay, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from selfevolve.config import Settings
from selfevolve.errors import SelfEvolveError


def _up(args, settings: Settings) -> int:
    from streams.stack import Stack

    Stack(settings).up(model_workers=args.model_workers, backends=args.backends, live=args.live,
                       serve_workers=args.serve_workers)
    return _status(args, settings)


def _down(args, settings: Settings) -> int:
    from streams.stack import Stack

    Stack(settings).down()
    print("stopped")
    return 0


def _status(args, settings: Settings) -> int:
    from streams.stack import Stack

    stack = Stack(settings)
    restarts = stack.restarts()  # what the supervisor recorded of each worker
    rows = stack.status()
    # A worker waiting out its restart delay has no pid file, but the supervisor knows it.
    rows += [(n, None, str(stack.logs / f"{n}.log")) for n in sorted(restarts) if n not in {r[0] for r in rows}]
    for name, pid, where in rows:
        state = "down" if pid is None else "up"
        w = restarts.get(name)
        extra = ""
        if w is not None:
            extra = f"  restarts={w['restarts']}"
            if w.get("last_exit") is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w["last_exit_at"]))
                extra += f" last_exit={w['last_exit']} at {when}"
            if w.get("held"):
                extra += " (stopped on purpose)"
            if w.get("port") is not None:  # a stream worker: its /ready port and its last answer
                extra += f" port={w['port']} {'ready' if w.get('ready') else 'not ready'}"
        print(f"{name:16} {state:5} {'' if pid in (None, -1) else pid:>8}  {where}{extra}")
    return 0


def _send_lines(args, settings: Settings, send, stage: str, noun: str) -> int:
    """Send JSON lines from a file or stdin with `send`; report each refused line and where the rest went."""
    src = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with src:
        sent, errors = asyncio.run(send(settings, src, tenant=args.tenant))
    for line_no, err in errors:
        print(f"line {line_no}: {err}", file=sys.stderr)
    where = settings.topic(f"{stage}.{args.tenant}" if args.tenant else stage)
    print(f"sent {sent} {noun} to {where}", file=sys.stderr)
    return 1 if errors else 0


def _produce(args, settings: Settings) -> int:
    from streams.produce import produce_lines

    return _send_lines(args, settings, produce_lines, "queries", "queries")


def _feedback(args, settings: Settings) -> int:
    from streams.produce import produce_feedback

    return _send_lines(args, settings, produce_feedback, "feedback", "verdicts")


def _tenants(args, settings: Settings) -> int:
    """`tenants add T`: T's topics, and with Kafka security on its SCRAM user, ACLs and a credential file."""
    from infra.kafka.security import add_tenant, tenant_user, write_secrets
    from selfevolve.wire.tenancy import check_tenant
    from selfevolve.wire.topics import Topics

    tenant = check_tenant(args.tenant)
    password = add_tenant(settings, tenant)
    topics = ", ".join(Topics.from_settings(settings).tenant_topics(tenant))
    print(f"tenant {tenant}: topics {topics}")
    if password is None:
        print("Kafka security is off: no credential was made, and anyone who reaches the broker can read "
              "these topics", file=sys.stderr)
        return 0
    # A secrets folder (one 0600 file per Settings field), what SELFEVOLVE_SECRETS_DIR takes.
    folder = write_secrets(settings.home / "secrets" / "tenants" / tenant,
                           {"kafka_username": tenant_user(tenant), "kafka_password": password,
                            "kafka_security": settings.kafka_security})
    print(f"credential of {tenant_user(tenant)} written to {folder} (mode 0600); the tenant runs "
          f"SELFEVOLVE_SECRETS_DIR={folder} selfevolve produce --tenant {tenant} / answers --tenant {tenant}")
    return 0


def _answers(args, settings: Settings) -> int:
    from streams.produce import print_answers

    asyncio.run(print_answers(settings, follow=args.follow, tenant=args.tenant))
    return 0


def _sql(args, settings: Settings) -> int:
    from streams.sqlclient import examples, sql

    named = examples()
    if args.list:
        for name in named:
            print(name)
        return 0
    if args.query in named:
        args.query = named[args.query]
    if not args.query:
        raise SelfEvolveError("give a SELECT, or the name of an example (selfevolve sql --list)")
    columns, rows = sql(settings, args.query)
    print("\t".join(columns))
    for row in rows:
        print("\t".join(str(v) for v in row))
    return 0


def _replay(args, settings: Settings) -> int:
    """In memory and deterministic (streams/log_replay.py), or --live through the running stack."""
    if args.live:
        if args.set or args.out or args.diff:
            raise SelfEvolveError("--set, --out and --diff belong to the in-memory replay, not to --live")
        from streams.stack_replay import run_replay

        report = run_replay(settings, Path(args.path), seed=args.seed, window=args.window,
                            warmup=args.warmup, limit=args.limit, feedback=not args.no_feedback,
                            progress=lambda r, n: print(f"  {r.answers}/{n} answered", file=sys.stderr))
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    from streams.log_replay import diff, parse_overrides, replay

    summary = replay(settings, Path(args.path), seed=args.seed, window=args.window, warmup=args.warmup,
                     limit=args.limit, feedback=not args.no_feedback, overrides=parse_overrides(args.set),
                     out=Path(args.out) if args.out else None,
                     progress=lambda n, total: print(f"  {n}/{total} queries", file=sys.stderr))
    print(json.dumps(summary, indent=2, default=str))
    if args.diff:
        print(diff(Path(summary["run_dir"]), Path(args.diff)))
    return 0


def _export(args, settings: Settings) -> int:
    from streams.log_replay import export

    counts = export(settings, Path(args.out), tenant=args.tenant, chdb=Path(args.chdb) if args.chdb else None)
    print(f"exported {counts} to {args.out}", file=sys.stderr)
    return 0


def _demo(args, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(settings, limit=args.limit, warmup=args.warmup, live=not args.no_live)


def _bench(args, settings: Settings) -> int:
    import importlib

    # Throughput needs the broker, so it lives with the adapters, not in the pure core.
    where = {"throughput": "bench.throughput", "security": "bench.security"}.get(
        args.name, f"bench.{args.name.replace('-', '_')}")
    module = importlib.import_module(where)
    return module.main(args.rest)


def _setup_models(args, settings: Settings) -> int:
    from selfevolve.distill.lm import ensure_converted

    t0 = time.time()
    # Only the conversion: loading the model here as well cost every `make demo` 10 s to 50 s.
    where = ensure_converted(settings)
    print(f"SmolLM2-135M ready under {where} ({time.time() - t0:.1f}s)")
    return 0


def _replay_parsers(sub) -> None:
    """`replay` (in memory, deterministic; or --live) and `export` (a past run as a replay LOG)."""
    rp = sub.add_parser("replay", help="replay an event log deterministically in memory (or --live)",
                        description="Replay LOG, a RouterBench-format directory or a `selfevolve export` file, "
                        "through every fold in memory (no broker): the same LOG, --seed and settings give the "
                        "same decisions, answers and evolution events. Writes RUN_DIR (a chdb store of the "
                        "run's records, summary.json, decisions.jsonl). --live sends it through the running "
                        "stack instead, which is NOT deterministic: when feedback and threshold changes land "
                        "depends on timing.")
    rp.add_argument("path", help="a RouterBench-format directory or an export file (selfevolve export)")
    rp.add_argument("--seed", type=int, default=0, help="stream order of a RouterBench directory")
    rp.add_argument("--window", type=int, default=50, help="queries sent before their answers' feedback")
    rp.add_argument("--warmup", type=int, help="train rows streamed first (RouterBench; default all)")
    rp.add_argument("--limit", type=int, help="test rows (RouterBench) or queries (export) to stream")
    rp.add_argument("--no-feedback", action="store_true")
    rp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting for this replay (any Settings field, e.g. theta_high=0.85)")
    rp.add_argument("--out", metavar="RUN_DIR", help="where the run goes (default <home>/replays/<log>-seed<N>)")
    rp.add_argument("--diff", metavar="RUN", help="print this run and RUN (another RUN_DIR) side by side")
    rp.add_argument("--live", action="store_true",
                    help="through the running stack (selfevolve up): not deterministic; no --set/--out/--diff")
    rp.set_defaults(fn=_replay)
    ex = sub.add_parser("export", help="write a past run's queries, responses and feedback as a replay LOG")
    ex.add_argument("out", help="the JSON-lines file to write")
    ex.add_argument("--tenant", help="only this tenant's records")
    ex.add_argument("--chdb", help="read this chdb store (a replay's RUN_DIR/chdb) instead of the stack's")
    ex.set_defaults(fn=_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfevolve", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start broker, the two stream workers and model workers in the background")
    up.add_argument("--model-workers", type=int, default=1)
    up.add_argument("--backends", default="replay")
    up.add_argument("--live", action="store_true", help="also run the distillation trainer and a local-model worker")
    up.add_argument("--serve-workers", type=int, default=None, metavar="N",
                    help="serve workers in one consumer group (default: settings.serve_workers); worker i "
                    "serves /ready on web_port + i")
    up.set_defaults(fn=_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(fn=_down)
    sub.add_parser("status", help="say what runs where").set_defaults(fn=_status)
    pr = sub.add_parser("produce", help="send JSON-lines queries (id, text, tenant, metadata)")
    pr.add_argument("file", help="a file, or - for standard input")
    pr.add_argument("--tenant", help="send as this tenant, to its own queries.<tenant> topic")
    pr.set_defaults(fn=_produce)
    an = sub.add_parser("answers", help="print answers as they arrive")
    an.add_argument("--follow", action="store_true")
    an.add_argument("--tenant", help="read this tenant's own answers.<tenant> topic (default: the internal one)")
    fb = sub.add_parser("feedback", help="send JSON-lines verdicts (id, model, quality 0..1) on answers")
    fb.add_argument("file", help="a file, or - for standard input")
    fb.add_argument("--tenant", help="send as this tenant, to its own feedback.<tenant> topic")
    fb.set_defaults(fn=_feedback)
    tn = sub.add_parser("tenants", help="manage tenants (topics, Kafka user and ACLs)")
    tn_sub = tn.add_subparsers(dest="action", required=True)
    tn_add = tn_sub.add_parser("add", help="create a tenant's topics and, with Kafka security, its credential")
    tn_add.add_argument("tenant")
    tn_add.set_defaults(fn=_tenants)
    an.set_defaults(fn=_answers)
    sq = sub.add_parser("sql", help="query the ClickHouse history (SQL text, or an example's name)")
    sq.add_argument("query", nargs="?", default="")
    sq.add_argument("--list", action="store_true", help="list the example queries of infra/clickhouse/examples.sql")
    sq.set_defaults(fn=_sql)
    _replay_parsers(sub)
    from streams.gateway_cli import add_parsers as gateway_parsers

    gateway_parsers(sub)  # `gateway` and `keys` (streams/gateway_cli.py)
    de = sub.add_parser("demo", help="start the embedded stack, replay the shipped workload, summarize")
    # 150 + 150 queries: enough for the router to learn, short enough for a demo on 2 cores.
    de.add_argument("--limit", type=int, default=150, help="test queries (of 300 shipped)")
    de.add_argument("--warmup", type=int, default=150, help="warm-up queries (of 300 shipped)")
    de.add_argument("--no-live", action="store_true", help="skip the live distillation phase")
    de.set_defaults(fn=_demo)
    be = sub.add_parser("bench", help="benchmarks: quality, evolution, distill, throughput, security, gateway, answer-cache, tenant-targets")
    be.add_argument("name", choices=["quality", "evolution", "distill", "throughput", "security", "gateway",
                                     "answer-cache", "tenant-targets"])
    be.add_argument("rest", nargs=argparse.REMAINDER)
    be.set_defaults(fn=_bench)
    sub.add_parser("setup-models", help="convert SmolLM2-135M from its GGUF once").set_defaults(fn=_setup_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from streams.stack import operator_settings  # the local stack's admin when it runs secured

        return args.fn(args, operator_settings(Settings.load()))
    except SelfEvolveError as e:
        print(f"selfevolve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
