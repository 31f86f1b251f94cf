"""Attacks on the SQL endpoint and `selfevolve sql`, on real chdb: each refused, nothing written, the sink unharmed."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest

from selfevolve.config import Settings
from selfevolve.errors import QueryRejected, StoreError
from streams import cli
from streams.sqlclient import examples, query_remote, run_sql, serve_sql, sql_token, token_path
from streams.store import HistoryStore

pytestmark = pytest.mark.security

TIMEOUT_S = 3.0
MAX_ROWS = 1000


class Listener:
    """A TCP port that counts connections: url(), s3() and remote() must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def hostile(tmp: Path, port: int) -> list[tuple[str, str, Path | None]]:
    """(statement, what the refusal must name, a file it must not create)."""
    out = tmp / "out"
    return [
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()", None),
        ("SELECT file('/etc/passwd')", "file()", None),
        ("sElEcT * fRoM FiLe('/etc/passwd', 'LineAsString')", "file()", None),
        ("SELECT * FROM `file`('/etc/passwd', 'LineAsString')", "file()", None),
        ("SELECT * FROM answers, file /* split */ ('/etc/passwd', 'LineAsString')", "file()", None),
        (f"INSERT INTO FUNCTION file('{out}1.tsv', 'TSV', 'x String') SELECT 'pwned'", "INSERT", out.with_name("out1.tsv")),
        (f"SELECT 'pwned' INTO OUTFILE '{out}2.tsv'", "INTO", out.with_name("out2.tsv")),
        (f"SELECT * FROM url('http://127.0.0.1:{port}/x', 'LineAsString')", "url()", None),
        (f"SELECT * FROM s3('http://127.0.0.1:{port}/bucket/key', 'LineAsString')", "s3()", None),
        (f"SELECT * FROM remote('127.0.0.1:{port}', system.one)", "remote()", None),
        (f"SELECT * FROM remoteSecure('127.0.0.1:{port}', system.one)", "remotesecure()", None),
        (f"SELECT * FROM executable('touch {out}3', 'LineAsString', 'x String')", "executable()", out.with_name("out3")),
        ("SELECT * FROM python(store)", "python()", None),
        ("SELECT dictGet('evil', 'x', toUInt64(1))", "dictget()", None),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS", None),
        ("SET readonly = 0", "SET", None),
        ("SELECT 1; DROP TABLE answers", "more than one statement", None),
        ("SELECT 1 /* ; */; -- \n TRUNCATE TABLE answers", "more than one statement", None),
        ("DROP TABLE answers", "DROP", None),
        ("dRoP tAbLe selfevolve.feedback", "DROP", None),
        ("ALTER TABLE answers DELETE WHERE 1", "ALTER", None),
        ("TRUNCATE TABLE answers", "TRUNCATE", None),
        (f"CREATE TABLE selfevolve.evil (x String) ENGINE = File(TSV, '{out}4.tsv')", "CREATE", out.with_name("out4.tsv")),
        (f"ATTACH TABLE evil2 FROM '{tmp}' (x String) ENGINE = File(TSV)", "ATTACH", None),
        ("CREATE DICTIONARY evil_dict (line String) PRIMARY KEY line "
         "SOURCE(FILE(path '/etc/passwd' format 'LineAsString')) LAYOUT(FLAT()) LIFETIME(0)", "CREATE", None),
        ("SYSTEM SHUTDOWN", "SYSTEM", None),
        ("KILL QUERY WHERE 1", "KILL", None),
        ("GRANT ALL ON *.* TO default", "GRANT", None),
        ("OPTIMIZE TABLE answers FINAL", "OPTIMIZE", None),
        ("USE system", "USE", None),
        ("SELECT * FROM system.users", "system.users", None),
        ("SELECT * FROM `/etc/passwd`", "quoted identifier", None),
        ("SELECT * FROM \u201c/etc/passwd\u201d", "U+201C", None),
        ("SELECT 1 -- hidden\rSETTINGS readonly = 0", "control", None),
        ("SELECT 1 /* a /* nested */ SETTINGS readonly = 0 */", "nested", None),
        ("WITH x AS (SELECT 1) SELECT * FROM x FORMAT JSON", "FORMAT", None),
        ("DESCRIBE file('/etc/passwd')", "file()", None),
        ("SELECT sleepEachRow(3) FROM answers", "sleepeachrow()", None),
        # Reads that are allowed in form but over a cap.
        ("SELECT arrayJoin(range(1000000))", "rows", None),
        ("SELECT arrayJoin(range(900)), repeat('x', 100000)", "bytes", None),
        ("SELECT a.x FROM (SELECT arrayJoin(range(5000)) AS x) AS a CROSS JOIN (SELECT arrayJoin(range(5000)) AS y) AS b",
         "rows", None),
        ("SELECT count() FROM (SELECT arrayJoin(range(100000)) AS x) AS a "
         "CROSS JOIN (SELECT arrayJoin(range(100000)) AS y) AS b WHERE cityHash64(x, y) = 0", "sql_timeout_s", None),
    ]


def _row(i: int) -> dict:
    return {"query_id": f"q{i}", "model": "m", "quality": 1.0, "source": "user", "ts_ms": 1_735_689_600_000 + i}


@pytest.fixture
def sql_settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, chdb_path=tmp_path / "chdb", sql_timeout_s=TIMEOUT_S, sql_max_rows=MAX_ROWS,
                    sql_max_bytes=1024 * 1024)


@pytest.fixture
def store(sql_settings):
    s = HistoryStore.open(sql_settings)
    s.ensure_schema()
    yield s
    s.close()


class Endpoint:
    """serve_sql on a free port, in a loop of its own, so the test can be plain synchronous code."""

    def __init__(self, store: HistoryStore, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        free = settings.model_copy(update={"sql_port": 0})
        self.endpoint = asyncio.run_coroutine_threadsafe(serve_sql(store, free), self.loop).result(30)
        self.url = self.endpoint.url

    def close(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.endpoint.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def endpoint(store, sql_settings):
    e = Endpoint(store, sql_settings)
    yield e
    e.close()


def _sink_inserts(store: HistoryStore, i: int) -> None:
    """The sink's own connection still writes (and is not read-only) after whatever the user sent."""
    before = store.count("feedback")
    store.insert("feedback", [_row(i)])
    assert store.count("feedback") == before + 1
    assert store.query("SELECT getSetting('readonly')")[1] == [(0,)]


@pytest.mark.parametrize("path", ["endpoint", "stack down"])
def test_hostile_statements_are_refused_and_the_sink_keeps_inserting(path, tmp_path, store, sql_settings, endpoint):
    listener = Listener()
    attacks = hostile(tmp_path, listener.port)
    assert len(attacks) >= 25
    token = sql_token(sql_settings)
    store.insert("answer", [])
    try:
        for i, (statement, why, must_not_exist) in enumerate(attacks):
            t0 = time.monotonic()
            with pytest.raises(StoreError) as info:
                if path == "endpoint":
                    query_remote(endpoint.url, statement, token)
                else:  # the same function the CLI runs when nothing listens: HistoryStore.user_query
                    store.user_query(statement)
            message = str(info.value)
            assert "query rejected" in message and why.lower() in message.lower(), (statement, message)
            assert "root:" not in message
            assert time.monotonic() - t0 < TIMEOUT_S + 20, statement
            if must_not_exist is not None:
                assert not must_not_exist.exists(), statement
            _sink_inserts(store, i)
    finally:
        listener.close()
    assert listener.hits == 0
    _, tables = store.query("SELECT name FROM system.tables WHERE database = 'selfevolve' ORDER BY name")
    assert "evil" not in {t for (t,) in tables} and "answers" in {t for (t,) in tables}
    _, dicts = store.query("SELECT count() FROM system.dictionaries")
    assert dicts == [(0,)]
    assert store.user_query("SELECT count() FROM feedback FINAL") == (["count()"], [(len(attacks),)])


def test_the_engine_session_refuses_on_its_own(monkeypatch, tmp_path, store):
    """Defense in depth: with both guard checks switched off, the read-only session still refuses
    table functions, writes and settings changes, and caps the result."""
    from selfevolve.store import sqlguard

    monkeypatch.setattr(sqlguard, "check", lambda sql, policy: sql.strip().rstrip(";"))
    monkeypatch.setattr(sqlguard, "check_ast", lambda statement, ast, policy: None)
    target = tmp_path / "engine.tsv"
    for statement in ["SELECT * FROM file('/etc/passwd', 'LineAsString')",
                      f"INSERT INTO FUNCTION file('{target}', 'TSV', 'x String') SELECT 'x'",
                      "INSERT INTO feedback (query_id) VALUES ('x')", "SELECT 1 SETTINGS readonly = 0",
                      "SET readonly = 0", "DROP TABLE answers", "SELECT arrayJoin(range(100000))"]:
        with pytest.raises(QueryRejected, match="read-only|over the cap"):
            store.user_query(statement)
        _sink_inserts(store, hash(statement) % 10_000)
    assert not target.exists()


def test_the_ast_check_catches_what_the_token_check_missed(monkeypatch, tmp_path, store):
    from selfevolve.store import sqlguard

    monkeypatch.setattr(sqlguard, "check", lambda sql, policy: sql.strip().rstrip(";"))
    for statement, why in [("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
                           ("SELECT file('/etc/passwd')", "file()"), ("SELECT * FROM system.users", "system.users"),
                           ("SELECT * FROM `/etc/passwd`", "/etc/passwd"),
                           (f"SELECT 1 INTO OUTFILE '{tmp_path}/x'", "OUTFILE")]:
        with pytest.raises(QueryRejected, match="query rejected") as info:
            store.user_query(statement)
        assert why in str(info.value)


def test_endpoint_needs_token_loopback_host_no_origin_and_a_small_body(sql_settings, endpoint):
    token = sql_token(sql_settings)
    path = token_path(sql_settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == token
    url, body = f"{endpoint.url}/sql", b"SELECT 1"
    good = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url, content=body, headers=good).json() == {"columns": ["1"], "rows": [[1]]}
    cases = [
        ({}, body, 401), ({"Authorization": "Bearer wrong"}, body, 401), ({"Authorization": token}, body, 401),
        ({**good, "Origin": "http://evil.example"}, body, 403), ({**good, "Host": "evil.example"}, body, 403),
        ({**good, "Host": f"evil.example:{endpoint.url.rsplit(':', 1)[1]}"}, body, 403),
        (good, b"SELECT 1 " + b" " * sql_settings.sql_max_body_bytes, 413),
    ]
    for headers, content, status in cases:
        response = httpx.post(url, content=content, headers=headers)
        assert response.status_code == status, (headers.keys(), response.text)
        assert "error" in response.json()
    chunked = httpx.post(url, headers=good, content=iter([b"SELECT 1 ", b" " * sql_settings.sql_max_body_bytes]))
    assert chunked.status_code == 413, chunked.text  # no Content-Length: stopped while reading
    with pytest.raises(StoreError, match="401"):
        query_remote(endpoint.url, "SELECT 1", "not-the-token")


def test_a_slow_user_query_delays_the_sink_by_at_most_its_timeout(sql_settings, store, endpoint):
    """chdb runs one statement at a time per process, whatever the handle: the cap on a user query's time
    is also the most the sink's next insert can wait. The insert then goes through on its own handle."""
    slow = ("SELECT count() FROM (SELECT arrayJoin(range(100000)) AS x) AS a "
            "CROSS JOIN (SELECT arrayJoin(range(100000)) AS y) AS b WHERE cityHash64(x, y) = 0")
    token = sql_token(sql_settings)
    errors: list[Exception] = []

    def run() -> None:
        try:
            query_remote(endpoint.url, slow, token)
        except StoreError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)  # the user query is running on its own handle now
    t0 = time.monotonic()
    _sink_inserts(store, 100)
    assert time.monotonic() - t0 < TIMEOUT_S + 5
    thread.join()
    assert errors and "sql_timeout_s" in str(errors[0])


def test_token_from_settings_wins_and_a_loose_token_file_is_refused(tmp_path):
    from pydantic import SecretStr

    assert sql_token(Settings(home=tmp_path, sql_token=SecretStr("s3cret"))) == "s3cret"
    settings = Settings(home=tmp_path)
    first = sql_token(settings)
    assert sql_token(settings) == first and len(first) >= 32
    os.chmod(token_path(settings), 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        sql_token(settings)


def test_documented_examples_run_through_the_endpoint_and_with_the_stack_down(sql_settings, store, endpoint, capsys):
    named = examples()
    assert len(named) >= 10
    store.insert("feedback", [_row(1)])
    for name, statement in named.items():
        columns, rows = run_sql(sql_settings, statement, endpoint.url)  # raises if refused or broken
        assert isinstance(rows, list), name
    assert run_sql(sql_settings, "SELECT query_id, quality FROM feedback", endpoint.url) == (
        ["query_id", "quality"], [("q1", 1.0)])
    assert cli.main(["sql", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(named)
    endpoint.close()
    store.close()  # the stack is down: run_sql opens the directory itself, through the same guard
    assert run_sql(sql_settings, "SELECT query_id FROM feedback", endpoint.url) == (["query_id"], [("q1",)])
    for statement in named.values():
        run_sql(sql_settings, statement, endpoint.url)
    with pytest.raises(QueryRejected, match="file"):
        run_sql(sql_settings, "SELECT * FROM file('/etc/passwd', 'LineAsString')", endpoint.url)
