"""A history store made by the DDL before tenants (ORDER BY query_id, no tenant columns) is migrated in place
by ensure_schema: rows kept, new keys and columns, and two tenants' same id then stay two rows."""

from __future__ import annotations

import pytest

from selfevolve.config import Settings
from streams.store import DATABASE, HistoryStore

OLD_DDL = """
CREATE DATABASE IF NOT EXISTS selfevolve;
CREATE TABLE IF NOT EXISTS selfevolve.queries
(
    version Int32 DEFAULT 1,
    query_id String,
    text String,
    tenant String DEFAULT 'default',
    metadata Map(String, String),
    ts_ms Int64,
    ts DateTime64(3, 'UTC') MATERIALIZED fromUnixTimestamp64Milli(ts_ms, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY query_id;
CREATE TABLE IF NOT EXISTS selfevolve.scores
(
    version Int32 DEFAULT 2,
    query_id String,
    model String,
    composite Float64,
    ts_ms Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (query_id, model);
"""


@pytest.fixture
def store(tmp_path):
    pytest.importorskip("chdb")
    with HistoryStore.open(Settings(home=tmp_path, chdb_path=tmp_path / "chdb")) as s:
        yield s, tmp_path


def _key(store, table: str) -> str:
    _, rows = store.query(f"SELECT sorting_key FROM system.tables WHERE database = '{DATABASE}' AND name = '{table}'")
    return rows[0][0]


def test_an_old_store_is_migrated_with_its_rows(store):
    s, tmp = store
    old = tmp / "old.sql"
    old.write_text(OLD_DDL)
    s.ensure_schema(old)
    s.query("INSERT INTO selfevolve.queries (query_id, text, tenant, metadata, ts_ms) VALUES "
            "('q1', 'a text', 'a', map(), 1), ('q2', 'other', 'default', map(), 2)")
    s.query("INSERT INTO selfevolve.scores (query_id, model, composite, ts_ms) VALUES ('q1', 'm', 0.5, 1)")
    assert _key(s, "queries") == "query_id"

    s.ensure_schema()  # the current DDL
    assert _key(s, "queries") == "tenant, query_id" and _key(s, "scores") == "tenant, query_id, model"
    _, rows = s.query("SELECT tenant, query_id, text FROM queries FINAL ORDER BY query_id")
    assert rows == [("a", "q1", "a text"), ("default", "q2", "other")]
    _, rows = s.query("SELECT tenant, query_id, model, composite FROM scores FINAL")
    assert rows == [("default", "q1", "m", 0.5)]  # the new column takes its default
    _, rows = s.query(f"SELECT name FROM system.tables WHERE database = '{DATABASE}' AND name LIKE '%__pre'")
    assert rows == []
    # Now keyed by (tenant, id): another tenant's q1 is a second row, not a replacement.
    s.insert("query", [{"query_id": "q1", "text": "b text", "tenant": "b", "metadata": {}, "ts_ms": 3}])
    _, rows = s.query("SELECT tenant, text FROM queries FINAL WHERE query_id = 'q1' ORDER BY tenant")
    assert rows == [("a", "a text"), ("b", "b text")]
    s.ensure_schema()  # idempotent: nothing left to migrate
    assert s.count("query") == 3


def test_a_migration_cut_short_is_finished_on_the_next_run(store):
    s, tmp = store
    old = tmp / "old.sql"
    old.write_text(OLD_DDL)
    s.ensure_schema(old)
    s.query("INSERT INTO selfevolve.queries (query_id, text, tenant, metadata, ts_ms) VALUES ('q1', 't', 'a', map(), 1)")
    # A crash right after the rename and a partial copy: the old rows live only in queries__pre.
    s.query("RENAME TABLE selfevolve.queries TO selfevolve.queries__pre")
    s.query("CREATE TABLE selfevolve.queries (query_id String, tenant String, text String, ts_ms Int64) "
            "ENGINE = ReplacingMergeTree ORDER BY (tenant, query_id)")
    s.ensure_schema()
    _, rows = s.query("SELECT tenant, query_id, text FROM queries FINAL")
    assert rows == [("a", "q1", "t")]
    assert _key(s, "queries") == "tenant, query_id"


def test_a_reused_id_keeps_the_first_query_row(store):
    s, _ = store
    s.ensure_schema()
    for text, ts in (("first", 10), ("reused", 20), ("first", 10)):  # the last is a re-delivery
        s.insert("query", [{"query_id": "q", "text": text, "tenant": "a", "metadata": {}, "ts_ms": ts}])
    _, rows = s.query("SELECT text FROM queries FINAL")
    assert rows == [("first",)]
