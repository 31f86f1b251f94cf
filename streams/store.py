"""History store: infra/clickhouse/ddl.sql on chdb or a ClickHouse server, batch inserts, SQL over HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import threading
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import clickhouse_connect
import httpx

from selfevolve.config import Settings
from selfevolve.errors import StoreError

DATABASE = "selfevolve"
DDL_PATH = Path(__file__).resolve().parent.parent / "infra" / "clickhouse" / "ddl.sql"
DEFAULT_SQL_URL = "http://127.0.0.1:8124"

# Event kind (Avro schema name in snake_case) -> table in DATABASE.
TABLES: dict[str, str] = {
    "query": "queries",
    "route_decision": "route_decisions",
    "inference_request": "inference_requests",
    "inference_response": "inference_responses",
    "score": "scores",
    "answer": "answers",
    "feedback": "feedback",
    "dead_letter": "dead_letters",
    "model_event": "model_events",
    "gap": "gaps",
    "spawn": "spawns",
    "strategy": "strategies",
}


def ddl_statements(text: str) -> list[str]:
    """Split the DDL file into statements: drop '--' comments, split on ';'."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _locked_elsewhere(chdb_dir: Path) -> bool:
    """Whether a chdb/ClickHouse engine holds the directory's status-file lock.

    Only asked after an open failed: the probe's own flock would also conflict with an engine
    this process holds, which chdb otherwise shares between stores on one path.
    """
    try:
        with open(chdb_dir / "status", "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _table(kind: str) -> str:
    try:
        return TABLES[kind]
    except KeyError:
        raise StoreError(f"unknown event kind {kind!r}; known: {sorted(TABLES)}") from None


class HistoryStore:
    """One connection to the history database; every call is serialised by a lock.

    The lock lets the sink insert from one thread while the SQL endpoint reads from another:
    a chdb handle, like a clickhouse-connect HTTP session, must not run two statements at once.
    chdb allows one engine directory per process and one process per directory (the engine locks
    ``<dir>/status``); other processes read through ``serve_sql`` instead.
    """

    def __init__(self, client: Any, target: str) -> None:
        self._client = client
        self._target = target
        self._lock = threading.Lock()
        self._columns: dict[str, list[tuple[str, str]]] = {}  # table -> insertable (name, type)
        self._closed = False

    @classmethod
    def open(cls, settings: Settings) -> HistoryStore:
        """A ClickHouse server when settings.clickhouse_url is set, else chdb at settings.chdb_dir."""
        try:
            if settings.clickhouse_url:
                # The DSN should not name a database that does not exist yet: ensure_schema creates it.
                client = clickhouse_connect.get_client(dsn=settings.clickhouse_url)
                target = settings.clickhouse_url.split("@")[-1]  # no credentials in messages
            else:
                path = settings.chdb_dir.resolve()
                path.mkdir(parents=True, exist_ok=True)
                # path= rather than a chdb:// DSN: the DSN form does not unquote odd characters.
                client = clickhouse_connect.get_client(interface="chdb", path=str(path))
                target = f"chdb:{path}"
        except Exception as e:  # the driver raises its own, chdb's and OS errors alike
            hint = ""
            if not settings.clickhouse_url and _locked_elsewhere(settings.chdb_dir.resolve()):
                hint = " (another process, e.g. the running sink, holds this chdb directory: use its SQL endpoint)"
            raise StoreError(f"cannot open history store: {e}{hint}") from e
        store = cls(client, target)
        try:
            if int(store._run(lambda c: c.command(f"EXISTS DATABASE {DATABASE}"))):
                store._use_database()
        except StoreError:
            store.close()
            raise
        return store

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Any) -> Any:
        if self._closed:
            raise StoreError(f"history store {self._target} is closed")
        with self._lock:
            try:
                return call(self._client)
            except Exception as e:  # driver, engine and value-packing errors all mean "store rejected it"
                raise StoreError(f"{self._target}: {e}") from e

    def _use_database(self) -> None:
        # Lets users write FROM answers instead of FROM selfevolve.answers.
        self._run(lambda c: setattr(c, "database", DATABASE))

    def ensure_schema(self, ddl_path: Path = DDL_PATH) -> None:
        """Create the database and every table if missing (idempotent); then make it the default."""
        try:
            text = ddl_path.read_text(encoding="utf-8")
        except OSError as e:
            raise StoreError(f"cannot read DDL {ddl_path}: {e}") from e
        for statement in ddl_statements(text):
            self._run(lambda c, s=statement: c.command(s))
        self._columns.clear()
        self._use_database()

    def _insertable(self, table: str) -> list[tuple[str, str]]:
        if table not in self._columns:
            _, rows = self.query(
                "SELECT name, type FROM system.columns "
                f"WHERE database = '{DATABASE}' AND table = '{table}' "
                "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position"
            )
            if not rows:
                raise StoreError(f"table {DATABASE}.{table} does not exist; call ensure_schema() first")
            self._columns[table] = [(name, type_) for name, type_ in rows]
        return self._columns[table]

    def insert(self, kind: str, rows: list[dict[str, Any]]) -> int:
        """Insert decoded events of one kind in one batch; returns the number of rows sent.

        Rows are dicts keyed by Avro field name; every row must carry the same keys. Maps are
        dicts, arrays lists, bytes stay bytes, None fills Nullable columns. Columns a row omits
        take their DDL default.
        """
        table = _table(kind)
        if not rows:
            return 0
        columns = self._insertable(table)
        keys = rows[0].keys()
        unknown = set(keys) - {name for name, _ in columns}
        if unknown:
            raise StoreError(f"{kind}: fields {sorted(unknown)} are not columns of {DATABASE}.{table}")
        for i, row in enumerate(rows):
            if row.keys() != keys:
                raise StoreError(f"{kind}: row {i} has fields {sorted(row)}, row 0 has {sorted(keys)}")
        names = [name for name, _ in columns if name in keys]
        types = [type_ for name, type_ in columns if name in keys]
        data = [[row[c] for c in names] for row in rows]
        # Known types spare the driver a DESCRIBE TABLE round trip per batch.
        self._run(
            lambda c: c.insert(table, data, column_names=names, column_type_names=types, database=DATABASE)
        )
        return len(rows)

    def query(self, sql: str, *, readonly: bool = False) -> tuple[list[str], list[tuple]]:
        """Run one statement; returns (column names, rows). readonly rejects writes and DDL."""
        # clickhouse-connect appends its own FORMAT clause, which a trailing ';' would break.
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise StoreError("empty SQL")
        settings = {"readonly": 2} if readonly else None  # 2: reads only, but settings may change
        result = self._run(lambda c: c.query(sql, settings=settings))
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def count(self, kind: str) -> int:
        """Distinct events of one kind: FINAL collapses re-delivered duplicates not merged yet."""
        _, rows = self.query(f"SELECT count() FROM {DATABASE}.{_table(kind)} FINAL")
        return int(rows[0][0])

    def close(self) -> None:
        """Release the connection (and chdb's directory lock). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            try:
                self._client.close()
            except Exception as e:
                raise StoreError(f"closing {self._target}: {e}") from e


# --- SQL over HTTP: the sink process owns the chdb directory, so other processes ask it. ---


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)  # IP addresses and other driver types: their SQL text form


@dataclass
class SqlEndpoint:
    """A running SQL endpoint; ``url`` is what ``query_remote`` takes."""

    url: str
    _runner: Any

    async def close(self) -> None:
        await self._runner.cleanup()


async def serve_sql(store: HistoryStore, host: str = "127.0.0.1", port: int = 8124) -> SqlEndpoint:
    """Serve read-only SQL on POST {url}/sql (body: SQL text) from the running event loop.

    Replies JSON ``{"columns": [...], "rows": [[...]]}`` or, with status 400, ``{"error": "..."}``.
    Datetimes come back as ISO strings. port=0 picks a free port. Queries run in a worker
    thread so the sink's loop keeps consuming while a long SELECT runs.
    """
    from aiohttp import web  # only the sink process serves; the CLI should not pay for importing it

    async def sql(request: web.Request) -> web.Response:
        text = await request.text()
        try:
            columns, rows = await asyncio.to_thread(store.query, text, readonly=True)
        except StoreError as e:
            return web.json_response({"error": str(e)}, status=400)
        body = json.dumps({"columns": columns, "rows": rows}, default=_json_default)
        return web.Response(text=body, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/sql", sql)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise StoreError(f"cannot serve SQL on {host}:{port}: {e}") from e
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"  # IPv6 literal in a URL
    return SqlEndpoint(url=f"http://{bound_host}:{bound_port}", _runner=runner)


def _post_sql(url: str, sql: str, timeout_s: float) -> tuple[list[str], list[tuple]]:
    """POST to the endpoint; lets httpx transport errors through so callers can fall back."""
    response = httpx.post(f"{url.rstrip('/')}/sql", content=sql.encode("utf-8"), timeout=timeout_s)
    try:
        body = response.json()
    except ValueError as e:
        raise StoreError(f"{url}: not a selfevolve SQL endpoint (HTTP {response.status_code})") from e
    if response.status_code != 200:
        raise StoreError(f"{url}: {body.get('error', body)}")
    return list(body["columns"]), [tuple(r) for r in body["rows"]]


def query_remote(url: str, sql: str, timeout_s: float = 60.0) -> tuple[list[str], list[tuple]]:
    """Run SQL on a live sink's endpoint; values are JSON-typed (datetimes as ISO strings)."""
    try:
        return _post_sql(url, sql, timeout_s)
    except httpx.HTTPError as e:
        raise StoreError(f"SQL endpoint {url} unreachable: {e}") from e


def run_sql(settings: Settings, sql: str, url: str = DEFAULT_SQL_URL) -> tuple[list[str], list[tuple]]:
    """What ``selfevolve sql`` runs: the live sink's endpoint first, else the store itself.

    A ClickHouse server serves many clients, so it is queried directly. chdb is single-process:
    while the stack runs, the sink holds the directory and answers on ``url``; when the endpoint
    does not answer, the stack is down and the directory is opened here.
    """
    if not settings.clickhouse_url:
        try:
            return _post_sql(url, sql, 60.0)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            pass  # nothing listening: the stack is down
        except httpx.HTTPError as e:
            raise StoreError(f"SQL endpoint {url} failed: {e}") from e
    with HistoryStore.open(settings) as store:
        if not settings.clickhouse_url:
            store.ensure_schema()  # so FROM answers resolves even before the first sink run
        return store.query(sql)
