"""Deterministic replay of an event log through the in-memory driver (`selfevolve replay`, `selfevolve export`).

A LOG is either
- a RouterBench-format directory (<task>_<split>.csv[.gz], selfevolve/data/routerbench.py): its train rows
  (warm-up) then its test rows, each shuffled by --seed, are the queries; the recorded answers serve the
  calls (selfevolve/flow/responders.py); the `correct` columns are the gold posted as feedback; or
- an export of a past run (`selfevolve export`, the format below): its queries in their recorded order; its
  inference responses serve the calls, a call to a model the run never called for that query being a
  failed call (counted in the summary as calls_without_recording); its feedback is the gold.

The replay runs every fold of both roles (selfevolve/flow/dataflow.py) in windows of --window queries:
send the window, run to quiescence, post the gold verdicts on the models each answer paid for, run to
quiescence. Query ts_ms are i * 1000 and nothing reads a clock, so the same LOG, seed and settings give the
same records. RUN_DIR receives them in a chdb history store (RUN_DIR/chdb, the sink's tables and rows),
summary.json (accuracy judged against gold after the fact, cost, cost vs supervisor, strategy mix,
evolution events, overrides, seed) and decisions.jsonl (one line per answered query, for --diff).

Export format (EXPORT_FORMAT, JSON lines, UTF-8): a first line {"kind": "export", "record": {"format":
"selfevolve-export/1", "source": ..., "tenant": ...}}, then one line {"kind": K, "record": R} per stored
event, K one of "query", "inference_response", "feedback", R the record with the Avro fields of
schemas/<K>.avsc (the history table's columns, less `version`): queries ordered by (ts_ms, tenant,
query_id), responses by (ts_ms, tenant, request_id), feedback by (ts_ms, tenant, query_id, model). The
history store keeps everything a replay needs (query texts and metadata, every response's answer, cost and
ok flag, every verdict); a feedback verdict stands for gold, so only models someone judged can be scored.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from selfevolve.flow import dataflow, driver
from selfevolve.flow.responders import NEVER_CALLED, logged, recorded
from selfevolve.flow.workload import Workload, from_log, from_samples, outcomes, plan
from selfevolve.models.catalogue import Catalogue, Role

EXPORT_FORMAT = "selfevolve-export/1"
EXPORT_TABLES = {"query": ("queries", "ts_ms, tenant, query_id"),
                 "inference_response": ("inference_responses", "ts_ms, tenant, request_id"),
                 "feedback": ("feedback", "ts_ms, tenant, query_id, model")}
PAGE = 5000  # rows per SQL read (under the user session's sql_max_rows)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs of Settings fields; a value is read as JSON when it parses (0.85, [..], true)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or key not in Settings.model_fields:
            raise ConfigError(f"--set {pair!r}: expected <setting>=<value> with a Settings field "
                              f"(e.g. theta_high=0.85)")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """settings with overrides, each checked by Settings' own validation."""
    if not overrides:
        return settings
    try:
        checked = Settings(**overrides)
    except Exception as e:  # pydantic's ValidationError: a value of the wrong type or out of range
        raise ConfigError(f"--set: {e}") from e
    return settings.model_copy(update={k: getattr(checked, k) for k in overrides})


def supervisor_of(catalogue: Catalogue, models: tuple[str, ...] = ()) -> str | None:
    """The catalogue's dearest active supervisor among `models` (all when empty)."""
    sups = [s for s in catalogue.active() if s.role == Role.SUPERVISOR and (not models or s.name in models)]
    return max(sups, key=lambda s: (s.cost_per_call or 0.0, s.name)).name if sups else None


def load_log(path: Path, catalogue: Catalogue, seed: int, warmup: int | None, limit: int | None):
    """(workload, responder, format) of a RouterBench directory or an export file."""
    if path.is_dir():
        from selfevolve.data.routerbench import load_dir

        ds = load_dir(path).require_responses()
        sup = supervisor_of(catalogue, ds.models)
        work = from_samples(path.name, plan(ds, seed, warmup, limit), sup)
        return work, recorded(ds, catalogue), "routerbench"
    records = read_export(path)
    queries = records["query"][:limit] if limit is not None else records["query"]
    sup = supervisor_of(catalogue)
    price = catalogue.get(sup).cost_per_call if sup else None
    return from_log(path.stem, queries, records["feedback"], sup, price), logged(records["inference_response"]), "export"


def replay(settings: Settings, log: Path, *, seed: int = 0, window: int = 50, warmup: int | None = None,
           limit: int | None = None, feedback: bool = True, overrides: dict | None = None,
           out: Path | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Replay LOG in memory, write RUN_DIR (store, summary.json, decisions.jsonl); returns the summary."""
    from selfevolve.routing.embed_cache import embed_all, lookup

    t0 = time.perf_counter()
    overrides = overrides or {}
    settings = with_overrides(settings, overrides)
    catalogue = Catalogue.load(settings.catalogue)
    work, responder, fmt = load_log(Path(log), catalogue, seed, warmup, limit)
    texts = [q["text"] for q in work.queries]
    vecs = embed_all(settings, texts, log=lambda m: print(m, file=sys.stderr))
    flow = dataflow.build(settings, catalogue, lookup(texts, vecs), dim=int(vecs.shape[1]) if len(texts) else None)
    total = len(work.queries)
    result = driver.replay(flow.driver(responder), work.queries, work.feedback if feedback else None,
                           window=window, on_window=(lambda n, _r: progress(n, total)) if progress else None)
    run_dir = Path(out) if out is not None else default_run_dir(settings, Path(log), seed, overrides)
    summary = summarize(work, result, {"log": str(log), "format": fmt, "seed": seed, "window": window,
                                       "warmup": warmup, "limit": limit, "feedback": feedback,
                                       "overrides": overrides})
    write_run(run_dir, settings, result, summary, work)
    summary["seconds"] = time.perf_counter() - t0  # not in summary.json: the one figure that varies
    summary["run_dir"] = str(run_dir)
    return summary


def default_run_dir(settings: Settings, log: Path, seed: int, overrides: dict) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", log.name.removesuffix(".jsonl")) + f"-seed{seed}"
    if overrides:
        name += "-" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return settings.home / "replays" / name


def summarize(work: Workload, result: driver.Result, run: dict) -> dict:
    """The run judged against gold after the fact, and what evolution did."""
    outs = outcomes(result, work)
    judged = [o.correct for o in outs if o.correct is not None]
    sup_cost = [work.supervisor_cost[o.key] for o in outs if o.key in work.supervisor_cost]
    sup_right = [work.gold.get(o.key, {}).get(work.supervisor) for o in outs]
    sup_right = [q for q in sup_right if q is not None]
    cost = sum(o.cost for o in outs)
    phases: dict[str, dict] = {}
    for o in outs:
        p = phases.setdefault(o.phase, {"answers": 0, "correct": 0.0, "judged": 0, "cost_usd": 0.0})
        p["answers"] += 1
        p["judged"] += o.correct is not None
        p["correct"] += o.correct or 0.0
        p["cost_usd"] += o.cost
    responses = result.of("inference_response")
    router = result.states["router"]
    return {**run, "deterministic": True, "queries": len(work.queries), "answers": len(outs),
            "accuracy": sum(judged) / len(judged) if judged else None, "judged": len(judged),
            "cost_usd": cost, "supervisor": work.supervisor, "supervisor_cost_usd": sum(sup_cost),
            "cost_ratio": cost / sum(sup_cost) if sup_cost and sum(sup_cost) else None,
            "supervisor_accuracy": sum(sup_right) / len(sup_right) if sup_right else None,
            "by_phase": phases, "strategies": dict(Counter(o.strategy for o in outs)),
            "winners": dict(Counter(o.winner for o in outs).most_common()),
            "failed_calls": sum(not r["ok"] for r in responses),
            "calls_without_recording": sum(NEVER_CALLED in (r.get("error") or "") for r in responses),
            "dead_letters": len(result.dead_letters),
            "evolution": {"model_events": dict(Counter(e["kind"] for e in result.of("model_event"))),
                          "gaps": len(result.of("gap")), "spawns": len(result.of("spawn")),
                          "strategy_changes": len(result.of("strategy")),
                          "theta_final": [router.theta_high, router.theta_low]},
            "records": {k: len(v) for k, v in sorted(result.records.items())},
            "decisions": [{"query": o.key, "phase": o.phase, "strategy": o.strategy, "models": list(o.models),
                           "domain": o.domain, "winner": o.winner, "models_called": list(o.models_called),
                           "cost_usd": o.cost, "correct": o.correct} for o in outs]}


def write_run(run_dir: Path, settings: Settings, result: driver.Result, summary: dict, work: Workload) -> None:
    """RUN_DIR/chdb (every record, through the codec and the sink's tables), summary.json, decisions.jsonl."""
    from selfevolve.wire.codec import Codec
    from streams.store import HistoryStore

    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "summary.json").exists():
        raise ConfigError(f"{run_dir} exists and holds no replay (no summary.json): choose another --out")
    shutil.rmtree(run_dir / "chdb", ignore_errors=True)  # a replay's store holds that run only
    run_dir.mkdir(parents=True, exist_ok=True)
    codec = Codec.from_dir()
    store = HistoryStore.open(settings.model_copy(update={"clickhouse_url": None, "chdb_path": run_dir / "chdb"}))
    try:
        store.ensure_schema()
        for kind, records in result.records.items():
            # The row the sink would store: the record's Avro bytes, decoded (defaults and version filled).
            rows = [codec.decode(kind, codec.encode(kind, r)) for r in records]
            for lo in range(0, len(rows), PAGE):
                store.insert(kind, rows[lo:lo + PAGE])
    finally:
        store.close()
    decisions = summary.pop("decisions")
    with open(run_dir / "decisions.jsonl", "w", encoding="utf-8") as f:
        for d in decisions:
            f.write(json.dumps(d, sort_keys=True) + "\n")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))


def load_run(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    """(summary, decisions by query key) of a replay's RUN_DIR."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        lines = (run_dir / "decisions.jsonl").read_text().splitlines()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run_dir} is not a replay's RUN_DIR: {e}") from e
    return summary, {d["query"]: d for d in map(json.loads, lines)}


def diff(this: Path, other: Path, show: int = 10) -> str:
    """This run and another side by side: accuracy, cost, evolution events, and the decisions that changed."""
    (a, da), (b, db) = load_run(this), load_run(other)

    def fmt(v: Any) -> str:
        return v if isinstance(v, str) else f"{v:.4f}" if isinstance(v, float) else json.dumps(v, sort_keys=True)

    rows = [("run", str(this), str(other)), ("overrides", a["overrides"], b["overrides"]),
            ("seed / window", [a["seed"], a["window"]], [b["seed"], b["window"]]),
            ("answers", a["answers"], b["answers"]), ("accuracy", a["accuracy"], b["accuracy"]),
            ("cost_usd", a["cost_usd"], b["cost_usd"]), ("cost vs supervisor", a["cost_ratio"], b["cost_ratio"]),
            ("strategies", a["strategies"], b["strategies"])]
    rows += [(f"evolution {k}", a["evolution"][k], b["evolution"].get(k)) for k in a["evolution"]]
    width = max(len(fmt(x)) for _, x, _ in rows)
    lines = [f"{name:27s} {fmt(x):{width}s} | {fmt(y)}" for name, x, y in rows]
    changed = [k for k in da if k in db and _decision(da[k]) != _decision(db[k])]
    only = len(set(da) ^ set(db))
    lines.append(f"decisions changed: {len(changed)} of {len(set(da) & set(db))} queries answered by both"
                 + (f"; {only} answered by one run only" if only else ""))
    for k in changed[:show]:
        x, y = da[k], db[k]
        lines.append(f"  {k}: {x['strategy']} {x['models']} -> {x['winner']} ({x['correct']})   vs   "
                     f"{y['strategy']} {y['models']} -> {y['winner']} ({y['correct']})")
    return "\n".join(lines)


def _decision(d: dict) -> tuple:
    return d["strategy"], tuple(d["models"]), d["winner"], tuple(d["models_called"])


def read_export(path: Path) -> dict[str, list[dict]]:
    """The records of an export file by kind; ConfigError for anything else."""
    out: dict[str, list[dict]] = {k: [] for k in EXPORT_TABLES}
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline() or "{}")
            if header.get("kind") != "export" or header.get("record", {}).get("format") != EXPORT_FORMAT:
                raise ConfigError(f"{path}: not a {EXPORT_FORMAT} file (selfevolve export), nor a RouterBench "
                                  "directory")
            for n, line in enumerate(f, start=2):
                item = json.loads(line)
                if item.get("kind") not in out:
                    raise ConfigError(f"{path}:{n}: unknown kind {item.get('kind')!r}")
                out[item["kind"]].append(item["record"])
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON lines: {e}") from e
    return out


def export(settings: Settings, out: Path, *, tenant: str | None = None, chdb: Path | None = None) -> dict[str, int]:
    """Write the stored queries, responses and feedback (of one tenant, or all) to `out`; counts per kind.
    From the running stack's SQL endpoint, else the store itself; `chdb` names another run's store."""
    from selfevolve.wire.tenancy import check_tenant
    from streams.sqlclient import run_sql
    from streams.store import HistoryStore

    where = f"WHERE tenant = '{check_tenant(tenant)}'" if tenant else ""
    store = None
    if chdb is not None:
        store = HistoryStore.open(settings.model_copy(update={"clickhouse_url": None, "chdb_path": Path(chdb)}))
        store.ensure_schema()
    counts = {}
    try:
        with open(out, "w", encoding="utf-8") as f:
            source = str(chdb) if chdb is not None else (settings.clickhouse_url or "the running stack's store")
            f.write(json.dumps({"kind": "export", "record": {"format": EXPORT_FORMAT, "source": source,
                                                             "tenant": tenant}}) + "\n")
            for kind, (table, order) in EXPORT_TABLES.items():
                counts[kind] = 0
                while True:
                    sql = f"SELECT * FROM {table} FINAL {where} ORDER BY {order} LIMIT {PAGE} OFFSET {counts[kind]}"
                    columns, rows = store.query(sql) if store is not None else run_sql(settings, sql)
                    for row in rows:
                        record = {c: v for c, v in zip(columns, row) if c != "version"}
                        f.write(json.dumps({"kind": kind, "record": record}, default=str) + "\n")
                    counts[kind] += len(rows)
                    if len(rows) < PAGE:
                        break
    finally:
        if store is not None:
            store.close()
    return counts
