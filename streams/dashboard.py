"""The live page (GET /dashboard on the gateway): cost, quality, strategy mix, win rates, evolution from ClickHouse."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfevolve.config import Settings
from selfevolve.errors import SelfEvolveError
from selfevolve.models.catalogue import Catalogue

PAGE = Path(__file__).resolve().parent / "dashboard.html"
BUCKETS = 60  # points per time series: the window's span is cut into this many buckets
Query = Callable[[str], tuple[list[str], list[tuple]]]


def store_query(settings: Settings) -> Query:
    """How the page reads the history store. A ClickHouse server takes any number of clients; chdb is embedded
    and one process holds its folder (the history role's sink), so the page asks that role's SQL endpoint and
    never opens the folder itself (which would lock the sink out)."""
    if settings.clickhouse_url:
        from streams.store import HistoryStore

        def direct(sql: str):
            with HistoryStore.open(settings) as store:
                return store.user_query(sql)

        return direct
    from streams.sqlclient import LOOPBACK, client_timeout_s, query_remote, sql_token

    url = f"http://{LOOPBACK}:{settings.sql_port}"
    return lambda sql: query_remote(url, sql, sql_token(settings), client_timeout_s(settings))


def supervisor_price(catalogue: Catalogue) -> tuple[str, float]:
    """The model a supervisor-only deployment would call for every query, and its price per call (the top
    tier's flat price; 0 where the catalogue prices it per token only)."""
    top = max(catalogue, key=lambda s: (s.role.value == "supervisor", s.tier, s.cost_per_call or 0.0))
    return top.name, float(top.cost_per_call or 0.0)


def _rows(result: tuple[list[str], list[tuple]]) -> list[dict[str, Any]]:
    columns, rows = result
    return [dict(zip(columns, r)) for r in rows]


def _since(window_s: int) -> str:
    """Rows of the last window_s seconds before the newest answer (not the wall clock: a replayed history is
    shown as it happened)."""
    return f"ts >= (SELECT max(ts) FROM selfevolve.answers) - toIntervalSecond({int(window_s)})"


def collect(query: Query, settings: Settings, catalogue: Catalogue) -> dict[str, Any]:
    """Everything the page shows, from a few aggregate queries (no query text, no answers)."""
    model, price = supervisor_price(catalogue)
    window = int(settings.dashboard_window_s)
    span = _rows(query(f"SELECT min(ts_ms) AS lo, max(ts_ms) AS hi, count() AS n FROM selfevolve.answers FINAL "
                       f"WHERE {_since(window)}"))[0]
    lo, hi = int(span["lo"] or 0), int(span["hi"] or 0)
    bucket_s = max(1, math.ceil((hi - lo) / 1000 / BUCKETS)) if span["n"] else 1
    t = f"toUnixTimestamp(toStartOfInterval(ts, toIntervalSecond({bucket_s})))"
    cost = _rows(query(f"SELECT {t} AS t, count() AS n, sum(cost_usd) AS cost FROM selfevolve.answers FINAL "
                       f"WHERE {_since(window)} GROUP BY t ORDER BY t"))
    for row in cost:
        row["supervisor_only"] = row["n"] * price
    strategy = _rows(query(f"SELECT {t} AS t, strategy, count() AS n FROM selfevolve.answers FINAL "
                           f"WHERE {_since(window)} GROUP BY t, strategy ORDER BY t, strategy"))
    quality = _rows(query(f"SELECT {t} AS t, count() AS n, avg(quality) AS quality FROM selfevolve.feedback FINAL "
                          f"WHERE {_since(window)} GROUP BY t ORDER BY t"))
    wins = _rows(query("SELECT model, domain, count() AS n, countIf(winner) AS wins, "
                       "countIf(winner) / count() AS win_rate FROM selfevolve.scores FINAL "
                       f"WHERE contested AND {_since(window)} GROUP BY model, domain "
                       "ORDER BY domain, win_rate DESC"))
    events = _rows(query("SELECT toUnixTimestamp(ts) AS t, model, kind, domain, old_role, new_role, reason "
                         "FROM selfevolve.model_events FINAL ORDER BY ts_ms DESC LIMIT 30"))
    n, spent = sum(r["n"] for r in cost), sum(r["cost"] for r in cost)
    rated = sum(r["n"] for r in quality)
    return {
        "generated_ms": int(time.time() * 1000), "bucket_s": bucket_s, "window_s": window,
        "refresh_s": settings.dashboard_refresh_s, "supervisor": {"model": model, "cost_per_call": price},
        "cost": cost, "strategy": strategy, "quality": quality, "win_rates": wins, "events": events,
        "totals": {"answers": n, "cost_usd": spent, "supervisor_only_usd": n * price,
                   "saved_ratio": 1 - spent / (n * price) if n and price else None, "feedback": rated,
                   "mean_quality": (sum(r["quality"] * r["n"] for r in quality) / rated) if rated else None},
        "error": None,
    }


class DashboardData:
    """collect() at most once per refresh interval, whatever the number of viewers: chdb runs one statement at
    a time, and the sink's inserts wait behind the page's reads."""

    def __init__(self, settings: Settings, query: Query | None = None) -> None:
        self.settings = settings
        self.query = query or store_query(settings)
        self.catalogue = Catalogue.load(settings.catalogue)
        self._last: tuple[float, dict] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._last is None or time.monotonic() - self._last[0] >= self.settings.dashboard_refresh_s:
                try:
                    data = await asyncio.to_thread(collect, self.query, self.settings, self.catalogue)
                except SelfEvolveError as e:  # the history role is down or still starting: the page says so
                    data = {"error": f"history store unavailable: {e}", "refresh_s": self.settings.dashboard_refresh_s,
                            "generated_ms": int(time.time() * 1000)}
                self._last = (time.monotonic(), data)
            return self._last[1]


def mount_dashboard(app, settings: Settings, query: Query | None = None) -> None:
    """Add GET /dashboard (the page) and GET /dashboard/data (its JSON, polled every dashboard_refresh_s) to a
    FastAPI app. Both show aggregates only; the gateway binds loopback unless told otherwise."""
    from fastapi.responses import HTMLResponse, JSONResponse

    data = DashboardData(settings, query)
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data() -> JSONResponse:
        body = await data.get()
        return JSONResponse(body, status_code=200, headers={"Cache-Control": "no-store"})
