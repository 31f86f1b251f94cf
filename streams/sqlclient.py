"""User SQL over HTTP: the sink's token-guarded endpoint, its client, and `selfevolve sql` (endpoint or store)."""

from __future__ import annotations

import asyncio
import datetime as dt
from concurrent.futures import ThreadPoolExecutor
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from selfevolve.config import DEFAULTS, Settings
from selfevolve.errors import StoreError
from streams.store import HistoryStore

LOOPBACK = "127.0.0.1"
MAX_QUEUED = 8  # user queries waiting for the endpoint's one query thread
CLIENT_MARGIN_S = 30.0  # a client waits this much past sql_timeout_s: the engine's own timeout answers first
EXAMPLES = Path(__file__).resolve().parent.parent / "infra" / "clickhouse" / "examples.sql"


# --- The token: settings.sql_token, else <home>/secrets/sql_token (made once, mode 0600). ---


def token_path(settings: Settings) -> Path:
    return settings.home / "secrets" / "sql_token"


def sql_token(settings: Settings) -> str:
    """The endpoint's bearer token; the first caller (the sink, or the CLI) creates the file."""
    if settings.sql_token is not None:
        return settings.sql_token.get_secret_value()
    path = token_path(settings)
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # atomic create-if-absent: two starters agree on whichever linked first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_token(path)


def _read_token(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise StoreError(f"{path} is readable by other users: chmod 600 it (or delete it to get a new token)")
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise StoreError(f"{path} is empty: delete it to get a new token")
    return token


# --- The endpoint, served by the sink process, which holds the chdb directory. ---


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
    _pool: ThreadPoolExecutor

    async def close(self) -> None:
        await self._runner.cleanup()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _refusal(request: Any, token: str, port: int) -> tuple[int, str] | None:
    """Why a request may not run SQL: (status, reason), or None. Checked before the body is read."""
    if "Origin" in request.headers:  # a browser: any page could otherwise post here
        return 403, "requests from browsers (with an Origin header) are refused"
    if request.headers.get("Host", "") not in {f"{h}:{port}" for h in (LOOPBACK, "localhost", "[::1]")}:
        return 403, "Host must be 127.0.0.1 or localhost with this port (DNS rebinding guard)"
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, "missing or wrong token: send Authorization: Bearer <the sql_token>"
    return None


async def serve_sql(store: HistoryStore, settings: Settings) -> SqlEndpoint:
    """Serve guarded SQL on POST http://127.0.0.1:{settings.sql_port}/sql (body: SQL text) from the running loop.

    Needs ``Authorization: Bearer <sql_token(settings)>``. Replies JSON ``{"columns": [...], "rows": [...]}``
    or ``{"error": "..."}`` with 400 (rejected or failed), 401, 403, 413 or 429. Binds loopback only; sql_port
    0 picks a free port (the endpoint's url names it). Queries run in a thread of their own, on the store's
    user session, so the sink's loop goes on while a SELECT runs (chdb itself runs one statement at a time
    per process, so a sink insert may wait for it, at most sql_timeout_s).
    """
    from aiohttp import web  # only the sink process serves; the CLI should not pay for importing it

    token = sql_token(settings)
    bound: dict[str, int] = {}
    # User queries get a thread of their own: queued behind a slow one, they must not take the default
    # executor's threads, which the sink's inserts run on. A short queue; past it the caller hears "busy".
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="user-sql")
    waiting = asyncio.Semaphore(MAX_QUEUED)

    async def sql(request: web.Request) -> web.Response:
        refused = _refusal(request, token, bound["port"])
        if refused:
            return web.json_response({"error": refused[1]}, status=refused[0])
        if (request.content_length or 0) > settings.sql_max_body_bytes:
            return _too_large(settings)
        try:
            text = await request.text()  # aiohttp stops at client_max_size without a Content-Length too
        except web.HTTPRequestEntityTooLarge:
            return _too_large(settings)
        if waiting.locked():
            return web.json_response({"error": f"busy: {MAX_QUEUED} queries already queued"}, status=429)
        try:
            async with waiting:
                columns, rows = await asyncio.get_running_loop().run_in_executor(pool, store.user_query, text)
        except StoreError as e:
            return web.json_response({"error": str(e)}, status=400)
        body = json.dumps({"columns": columns, "rows": rows}, default=_json_default)
        return web.Response(text=body, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=settings.sql_max_body_bytes)
    app.router.add_post("/sql", sql)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = settings.sql_port
    try:
        await web.TCPSite(runner, LOOPBACK, port).start()
    except OSError as e:
        await runner.cleanup()
        pool.shutdown(wait=False)
        raise StoreError(f"cannot serve SQL on {LOOPBACK}:{port}: {e}") from e
    bound["port"] = runner.addresses[0][1]
    return SqlEndpoint(url=f"http://{LOOPBACK}:{bound['port']}", _runner=runner, _pool=pool)


def _too_large(settings: Settings) -> Any:
    from aiohttp import web

    return web.json_response({"error": f"SQL over {settings.sql_max_body_bytes} bytes (sql_max_body_bytes)"},
                             status=413)


# --- Clients. ---


def _post_sql(url: str, sql: str, token: str, timeout_s: float) -> tuple[list[str], list[tuple]]:
    """POST to the endpoint; lets httpx transport errors through so callers can fall back."""
    response = httpx.post(f"{url.rstrip('/')}/sql", content=sql.encode("utf-8"), timeout=timeout_s,
                          headers={"Authorization": f"Bearer {token}"})
    try:
        body = response.json()
    except ValueError as e:
        raise StoreError(f"{url}: not a selfevolve SQL endpoint (HTTP {response.status_code})") from e
    if response.status_code != 200:
        raise StoreError(f"{url}: {body.get('error', body)} (HTTP {response.status_code})")
    return list(body["columns"]), [tuple(r) for r in body["rows"]]


def client_timeout_s(settings: Settings) -> float:
    """How long a client waits for the endpoint's answer."""
    return settings.sql_timeout_s + CLIENT_MARGIN_S


def query_remote(url: str, sql: str, token: str,
                 timeout_s: float = client_timeout_s(DEFAULTS)) -> tuple[list[str], list[tuple]]:
    """Run SQL on a live sink's endpoint; values are JSON-typed (datetimes as ISO strings)."""
    try:
        return _post_sql(url, sql, token, timeout_s)
    except httpx.HTTPError as e:
        raise StoreError(f"SQL endpoint {url} unreachable: {e}") from e


def run_sql(settings: Settings, sql: str, url: str | None = None) -> tuple[list[str], list[tuple]]:
    """What ``selfevolve sql`` runs: the live sink's endpoint first, else the store itself.

    Both paths end in HistoryStore.user_query: the same guard, the same read-only capped session. A
    ClickHouse server serves many clients, so it is queried directly. chdb is single-process: while the
    stack runs, the sink holds the directory and answers on ``url``; when the endpoint does not answer,
    the stack is down and the directory is opened here.
    """
    url = url or f"http://{LOOPBACK}:{settings.sql_port}"
    timeout_s = client_timeout_s(settings)
    if not settings.clickhouse_url:
        try:
            return _post_sql(url, sql, sql_token(settings), timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            pass  # nothing listening: the stack is down
        except httpx.HTTPError as e:
            raise StoreError(f"SQL endpoint {url} failed: {e}") from e
    with HistoryStore.open(settings) as store:
        if not settings.clickhouse_url:
            store.ensure_schema()  # so FROM answers resolves even before the first sink run
        return store.user_query(sql)


def sql(settings: Settings, query: str) -> tuple[list[str], list]:
    return run_sql(settings, query)


def examples(path: Path = EXAMPLES) -> dict[str, str]:
    """The documented example queries, by the name on their `-- name:` line."""
    out: dict[str, list[str]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith("-- name:"):
            name = line.split(":", 1)[1].strip()
            out[name] = []
        elif name is not None and not line.startswith("--"):
            out[name].append(line)
    return {k: "\n".join(v).strip().rstrip(";") for k, v in out.items() if "".join(v).strip()}
