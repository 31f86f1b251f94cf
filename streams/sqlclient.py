"""`selfevolve sql`: the live sink's endpoint when the stack runs, else the store opened directly."""

from __future__ import annotations

from selfevolve.config import Settings
from streams.store import run_sql


def sql(settings: Settings, query: str) -> tuple[list[str], list]:
    return run_sql(settings, query, url=f"http://127.0.0.1:{settings.sql_port}")
