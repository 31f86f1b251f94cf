"""Integration tests of the history store on real chdb: DDL, dedup, persistence, SQL endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fastavro
import pytest

from selfevolve.config import Settings
from selfevolve.errors import StoreError
from streams.sqlclient import query_remote, run_sql, serve_sql, sql_token
from streams.store import TABLES, HistoryStore, ddl_statements

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
N = 500


def _schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind}.avsc").read_text())


def _value(avro_type, name: str, i: int):
    """A valid value for one Avro field; strings and ts_ms carry i so every event key is unique."""
    if isinstance(avro_type, list):  # ["null", "string"] or ["null", "bytes"]: every third row null
        return None if i % 3 == 0 else _value(avro_type[1], name, i)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "map" and avro_type["values"] == "string":
            return {"k": str(i), "tenant": "t"} if i % 2 else {}
        if avro_type["type"] == "map":  # e.g. a delivery's costs per model
            return {"k": _value(avro_type["values"], name, i)} if i % 2 else {}
        return [f"{name}-{i}", "x"] if i % 2 else []
    return {
        "string": f"{name}-{i}",
        "int": i % 7 - 1,
        "long": BASE_MS + i * 60_000 if name == "ts_ms" else i,  # one event a minute
        "double": i / 8,
        "boolean": i % 2 == 0,
        "bytes": bytes([i % 256, 0, 255]) + b"\n\"'",
    }[avro_type]


def _rows(kind: str, n: int = N) -> list[dict]:
    schema = _schema(kind)
    rows = [{f["name"]: _value(f["type"], f["name"], i) for f in schema["fields"]} for i in range(n)]
    parsed = fastavro.parse_schema(schema)
    assert all(fastavro.validation.validate(r, parsed) for r in rows[:5])  # what the sink would decode
    return rows


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, chdb_path=tmp_path / "chdb")


@pytest.fixture
def store(settings):
    s = HistoryStore.open(settings)
    s.ensure_schema()
    yield s
    s.close()


def test_every_schema_has_a_table_with_the_same_field_names(store):
    assert sorted(TABLES) == sorted(p.stem for p in SCHEMAS.glob("*.avsc"))
    for kind, table in TABLES.items():
        _, rows = store.query(
            f"SELECT name, default_kind FROM system.columns WHERE database = 'selfevolve' AND table = '{table}'"
        )
        plain = {name for name, default_kind in rows if default_kind != "MATERIALIZED"}
        assert plain == {f["name"] for f in _schema(kind)["fields"]}, kind
        assert ("ts", "MATERIALIZED") in rows, kind
        where = f"database = 'selfevolve' AND name = '{table}'"
        _, engine = store.query(f"SELECT engine FROM system.tables WHERE {where}")
        assert engine == [("ReplacingMergeTree",)], kind


def test_insert_count_redeliver_and_reopen(settings, store, capsys):
    timings = {}
    for kind in TABLES:
        rows = _rows(kind)
        t0 = time.perf_counter()
        assert store.insert(kind, rows) == N
        timings[kind] = time.perf_counter() - t0
        assert store.count(kind) == N, kind
    warm = {}
    for kind in TABLES:  # a crash before the offset commit re-delivers the whole batch
        rows = _rows(kind)
        t0 = time.perf_counter()
        store.insert(kind, rows)
        warm[kind] = time.perf_counter() - t0
    assert {k: store.count(k) for k in TABLES} == dict.fromkeys(TABLES, N)
    _, raw = store.query("SELECT count() FROM answers")  # without FINAL the duplicates may still show
    assert N <= raw[0][0] <= 2 * N
    store.close()

    with HistoryStore.open(settings) as again:  # no ensure_schema: the data and database persist
        assert {k: again.count(k) for k in TABLES} == dict.fromkeys(TABLES, N)
        _, rows = again.query(
            "SELECT query_id, metadata, fallback_from FROM inference_requests FINAL ORDER BY ts_ms LIMIT 2"
        )
        assert rows == [("query_id-0", {}, None), ("query_id-1", {"k": "1", "tenant": "t"}, "fallback_from-1")]
        _, rows = again.query("SELECT models_called, fallbacks FROM answers FINAL ORDER BY ts_ms LIMIT 2")
        assert rows == [([], []), (["models_called-1", "x"], ["fallbacks-1", "x"])]
        _, rows = again.query("SELECT hex(payload) FROM dead_letters FINAL WHERE `offset` = 7")
        assert rows == [((bytes([7, 0, 255]) + b"\n\"'").hex().upper(),)]
    first = sum(N / t for t in timings.values()) / len(timings)  # includes the column lookup
    steady = sum(N / t for t in warm.values()) / len(warm)
    with capsys.disabled():
        print(f"\nchdb insert, {N}-row batch, mean over {len(TABLES)} tables: first {first:,.0f} rows/s, "
              f"steady {steady:,.0f} rows/s")


def test_time_sql_on_materialized_ts(store):
    store.insert("answer", _rows("answer"))
    _, rows = store.query(
        "SELECT toStartOfHour(ts) AS hour, count() FROM answers FINAL GROUP BY hour ORDER BY hour"
    )
    expected = Counter(
        dt.datetime.fromtimestamp((BASE_MS + i * 60_000) / 1000, dt.timezone.utc).replace(minute=0, tzinfo=None)
        for i in range(N)
    )
    assert [(h.replace(tzinfo=None), c) for h, c in rows] == sorted(expected.items())
    _, rows = store.query("SELECT toDate(max(ts)), dateDiff('minute', min(ts), max(ts)) FROM answers")
    assert rows == [(dt.date(2025, 1, 1), N - 1)]


def test_insert_rejects_bad_rows(store):
    with pytest.raises(StoreError, match="unknown event kind"):
        store.insert("nope", [{}])
    with pytest.raises(StoreError, match="not columns"):
        store.insert("feedback", [{**_rows("feedback", 1)[0], "extra": 1}])
    mixed = _rows("feedback", 2)
    del mixed[1]["source"]
    with pytest.raises(StoreError, match="row 1"):
        store.insert("feedback", mixed)
    with pytest.raises(StoreError) as info:
        store.insert("feedback", [{**_rows("feedback", 1)[0], "quality": None}])  # not Nullable
    assert info.value.__cause__ is not None
    with pytest.raises(StoreError):
        store.query("SELEC 1")
    assert store.insert("feedback", []) == 0
    assert store.count("feedback") == 0


def test_columns_left_out_take_ddl_defaults(store):
    row = {k: v for k, v in _rows("query", 1)[0].items() if k not in ("version", "tenant", "metadata")}
    store.insert("query", [row])
    assert store.query("SELECT version, tenant, metadata FROM queries")[1] == [(1, "default", {})]


def test_ddl_split_ignores_comments():
    text = "-- a; b\nCREATE DATABASE x; -- c;\n\nCREATE TABLE x.t (a Int8) ENGINE = Memory;\n"
    assert ddl_statements(text) == ["CREATE DATABASE x", "CREATE TABLE x.t (a Int8) ENGINE = Memory"]


def test_second_process_cannot_open_the_same_chdb_dir(settings, store):
    """The finding behind serve_sql: chdb locks its directory against other processes."""
    code = (
        "from selfevolve.config import Settings; from streams.store import HistoryStore\n"
        "from selfevolve.errors import StoreError\n"
        f"try:\n    HistoryStore.open(Settings(chdb_path={str(settings.chdb_dir)!r}))\n"
        "except StoreError as e:\n    print('REFUSED', e)\nelse:\n    print('OPENED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert "REFUSED" in out.stdout and "holds this chdb directory" in out.stdout, out.stdout + out.stderr


def test_sql_endpoint_serves_reads_and_cli_falls_back_when_down(settings, store):
    store.insert("score", _rows("score"))

    token = sql_token(settings)

    async def scenario():
        endpoint = await serve_sql(store, settings.model_copy(update={"sql_port": 0}))
        try:
            sql = "SELECT model, toStartOfDay(ts) AS d, winner FROM scores FINAL ORDER BY ts_ms LIMIT 1;"
            cols, rows = await asyncio.to_thread(query_remote, endpoint.url, sql, token)
            assert cols == ["model", "d", "winner"]
            assert rows == [("model-0", "2025-01-01T00:00:00", True)]
            # While the store is open here, the CLI path must answer through the endpoint.
            live = await asyncio.to_thread(run_sql, settings, "SELECT count() FROM scores FINAL", endpoint.url)
            assert live == (["count()"], [(N,)])
            # While a query runs in a thread, the sink can keep inserting.
            await asyncio.gather(
                asyncio.to_thread(store.insert, "feedback", _rows("feedback")),
                asyncio.to_thread(query_remote, endpoint.url, "SELECT count() FROM scores", token),
            )
            with pytest.raises(StoreError, match="query rejected: DROP statements are not allowed"):
                await asyncio.to_thread(query_remote, endpoint.url, "DROP TABLE scores", token)
            with pytest.raises(StoreError, match="(?i)syntax"):
                await asyncio.to_thread(query_remote, endpoint.url, "SELECT (1, ", token)
            url = endpoint.url
        finally:
            await endpoint.close()
        return url

    url = asyncio.run(scenario())
    assert store.count("score") == N and store.count("feedback") == N
    with pytest.raises(StoreError, match="unreachable"):
        query_remote(url, "SELECT 1", token)
    store.close()  # the stack is down: the CLI opens the directory itself
    assert run_sql(settings, "SELECT count() FROM feedback FINAL", url) == (["count()"], [(N,)])
