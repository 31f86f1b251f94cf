"""`selfevolve sql`: ask the live sink over HTTP, or open the store directly when the stack is down."""

from __future__ import annotations

import httpx

from selfevolve.config import Settings
from selfevolve.errors import StoreError


def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[list]]:
    # With an embedded chdb the sink process holds the directory, so the live path goes through it.
    if settings.clickhouse_url is None:
        try:
            r = httpx.post(f"http://127.0.0.1:{settings.web_port}/sql/", json={"sql": sql}, timeout=60)
        except httpx.TransportError:
            r = None
        if r is not None:
            body = r.json()
            if r.status_code != 200:
                raise StoreError(body.get("error", r.text))
            return body["columns"], body["rows"]
    from streams.store import HistoryStore

    store = HistoryStore.open(settings)
    try:
        store.ensure_schema()
        columns, rows = store.query(sql)
        return list(columns), [list(r) for r in rows]
    finally:
        store.close()
