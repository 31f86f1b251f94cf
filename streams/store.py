"""History store: infra/clickhouse/ddl.sql on chdb or a ClickHouse server, batch inserts, guarded user SQL."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import clickhouse_connect

from selfevolve.store import sqlguard
from selfevolve.config import Settings
from selfevolve.errors import QueryRejected, StoreError
from selfevolve.wire.topics import STAGES

DATABASE = "selfevolve"
DDL_PATH = Path(__file__).resolve().parent.parent / "infra" / "clickhouse" / "ddl.sql"

# Event kind (topics.STAGES, the one list of kinds) -> table in DATABASE: the kind's topic stage in
# snake_case, plural where the stage's name is not.
_PLURAL = {"dead-letter": "dead_letters", "strategy": "strategies"}
TABLES: dict[str, str] = {kind: _PLURAL.get(stage, stage.replace("-", "_")) for stage, kind in STAGES.items()}


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

    def __init__(self, client: Any, target: str, connect: Callable[..., Any] | None = None,
                 user_settings: dict[str, Any] | None = None) -> None:
        self._client = client
        self._target = target
        self._lock = threading.Lock()
        self._columns: dict[str, list[tuple[str, str]]] = {}  # table -> insertable (name, type)
        self._closed = False
        # User SQL never runs on self._client: a rejected statement's settings stick to the handle it ran on
        # (chdb keeps per-query SETTINGS in the session), so it gets a handle of its own, read-only and capped.
        self._connect = connect
        self._user_settings = user_settings or {}
        self._reader: Any = None
        self._reader_lock = threading.Lock()
        self._table_functions: frozenset[str] = frozenset()

    @classmethod
    def open(cls, settings: Settings) -> HistoryStore:
        """A ClickHouse server when settings.clickhouse_url is set, else chdb at settings.chdb_dir."""
        try:
            if settings.clickhouse_url:
                # The DSN should not name a database that does not exist yet: ensure_schema creates it.
                def connect(**kw: Any) -> Any:
                    if settings.clickhouse_password is not None:  # a SecretStr, revealed to the driver only
                        kw.setdefault("password", settings.clickhouse_password.get_secret_value())
                    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, **kw)

                target = settings.clickhouse_url.split("@")[-1]  # no credentials in messages
            else:
                path = settings.chdb_dir.resolve()
                path.mkdir(parents=True, exist_ok=True)

                # path= rather than a chdb:// DSN: the DSN form does not unquote odd characters. Every
                # client is its own chdb handle (own session settings) on the process's one engine.
                def connect(**kw: Any) -> Any:
                    return clickhouse_connect.get_client(interface="chdb", path=str(path), **kw)

                target = f"chdb:{path}"
            client = connect()
        except Exception as e:  # the driver raises its own, chdb's and OS errors alike
            hint = ""
            if not settings.clickhouse_url and _locked_elsewhere(settings.chdb_dir.resolve()):
                hint = " (another process, e.g. the running sink, holds this chdb directory: use its SQL endpoint)"
            raise StoreError(f"cannot open history store: {e}{hint}") from e
        store = cls(client, target, connect, user_session_settings(settings))
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
        from streams.store_migrate import migrate

        # Tables of an older DDL (another ORDER BY, fewer columns) first move to the current shape, rows kept.
        migrate(ddl_statements(text), lambda sql: self._run(lambda c: c.command(sql)),
                lambda sql: ([], [tuple(r) for r in self._run(lambda c: c.query(sql).result_rows)]))
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

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one trusted statement of this code base; returns (column names, rows). Users: user_query."""
        # clickhouse-connect appends its own FORMAT clause, which a trailing ';' would break.
        sql = sql.strip().rstrip(";").strip()
        if not sql:
            raise StoreError("empty SQL")
        result = self._run(lambda c: c.query(sql))
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def user_query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one statement a user wrote: the guard's checks, then the read-only, capped session.

        The only way user SQL reaches the engine, for the endpoint and the stack-down CLI alike.
        """
        statement = sqlguard.check(sql, self._policy())
        with self._reader_lock:
            if self._closed:
                raise StoreError(f"history store {self._target} is closed")
            try:
                if self._reader is None:
                    self._reader = self._connect(database=DATABASE, settings=self._user_settings)
                    if not self._table_functions:  # what this engine knows, beyond the guard's own list
                        names = self._reader.query("SELECT name FROM system.table_functions").result_rows
                        self._table_functions = frozenset(n.lower() for (n,) in names)
                statement = sqlguard.check(sql, self._policy())  # again, with the engine's list
                ast = self._reader.query(f"EXPLAIN AST {statement}").result_rows
                sqlguard.check_ast(statement, [r[0] for r in ast], self._policy())
                return _capped_rows(self._reader, statement, self._user_settings)
            except QueryRejected:
                self._drop_reader()  # a fresh handle for the next query, whatever state this one is in
                raise
            except Exception as e:
                self._drop_reader()
                raise _user_error(e, self._user_settings, self._target) from e

    def _policy(self) -> sqlguard.Policy:
        return sqlguard.Policy(tables=frozenset(TABLES.values()),
                               table_functions=sqlguard.TABLE_FUNCTIONS | self._table_functions)

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # closing a broken handle: nothing more to release
                pass

    def count(self, kind: str) -> int:
        """Distinct events of one kind: FINAL collapses re-delivered duplicates not merged yet."""
        _, rows = self.query(f"SELECT count() FROM {DATABASE}.{_table(kind)} FINAL")
        return int(rows[0][0])

    def close(self) -> None:
        """Release the connection (and chdb's directory lock). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._reader_lock:
            self._drop_reader()
        with self._lock:
            try:
                self._client.close()
            except Exception as e:
                raise StoreError(f"closing {self._target}: {e}") from e



def user_session_settings(settings: Settings) -> dict[str, Any]:
    """ClickHouse settings of the user-SQL session. readonly=1 last: after it no setting can change, so
    neither a SETTINGS clause nor SET can lift a cap (readonly=2 would allow both), and table functions,
    which need CREATE TEMPORARY TABLE, are refused by the engine too."""
    return {
        "max_execution_time": settings.sql_timeout_s,
        "max_result_rows": settings.sql_max_rows,
        "max_result_bytes": settings.sql_max_bytes,
        "result_overflow_mode": "throw",
        "max_memory_usage": settings.sql_max_memory_bytes,
        "max_threads": settings.sql_max_threads,
        # The engine skips the result caps for constant-only queries (SELECT arrayJoin(range(1e8))); a
        # final LIMIT one past the cap makes them apply. _capped_rows counts again as the blocks arrive.
        "limit": settings.sql_max_rows + 1,
        "readonly": 1,
    }


def _size(value: Any) -> int:
    """Rough bytes of a decoded value: enough to stop a result that is far over the cap."""
    if isinstance(value, (str, bytes)):
        return len(value) + 8
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value) + 8
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items()) + 8
    return 8


def _capped_rows(client: Any, statement: str, caps: dict[str, Any]) -> tuple[list[str], list[tuple]]:
    """Stream the result block by block and stop once it passes the row or byte cap: constant columns
    (repeat('x', 1e6) beside arrayJoin) slip past the engine's byte count, never past this one."""
    if not statement.lstrip("( \t\n").lower().startswith(("select", "with")):
        result = client.query(statement)  # SHOW, DESCRIBE, EXPLAIN: small, and chdb cannot stream them
        return list(result.column_names), [tuple(r) for r in result.result_rows]
    rows: list[tuple] = []
    size = 0
    with client.query_row_block_stream(statement) as stream:
        columns = list(stream.source.column_names)
        for block in stream:
            rows.extend(tuple(r) for r in block)
            size += sum(_size(r) for r in block)
            if len(rows) > caps["max_result_rows"] or size > caps["max_result_bytes"]:
                raise QueryRejected("query rejected: " + _CAP_ERRORS["TOO_MANY_ROWS_OR_BYTES"].format(**caps))
    return columns, rows


_CAP_ERRORS = {
    "TOO_MANY_ROWS_OR_BYTES": "the result is over the cap of {max_result_rows} rows or {max_result_bytes} bytes "
                              "(sql_max_rows, sql_max_bytes): add a LIMIT or aggregate",
    "TIMEOUT_EXCEEDED": "the query ran over {max_execution_time} s (sql_timeout_s)",
    "TOO_SLOW": "the query would run over {max_execution_time} s (sql_timeout_s)",
    "MEMORY_LIMIT_EXCEEDED": "the query needs more than {max_memory_usage} bytes of memory (sql_max_memory_bytes)",
    "READONLY": "the SQL session is read-only: no writes, DDL, settings or table functions",
}


def _user_error(e: Exception, caps: dict[str, Any], target: str) -> StoreError:
    """A cap or the read-only session said no: say which; anything else (a typo) stays a StoreError."""
    text = str(e)
    for code, message in _CAP_ERRORS.items():
        if f"({code})" in text:
            return QueryRejected(f"query rejected: {message.format(**caps)}")
    return StoreError(f"{target}: {text}")
