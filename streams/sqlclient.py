"""`selfevolve sql`: the live sink's endpoint when the stack runs, else the store opened directly."""

from __future__ import annotations

from pathlib import Path

from selfevolve.config import Settings
from streams.store import run_sql


def sql(settings: Settings, query: str) -> tuple[list[str], list]:
    return run_sql(settings, query, url=f"http://127.0.0.1:{settings.sql_port}")


EXAMPLES = Path(__file__).resolve().parent.parent / "infra" / "clickhouse" / "examples.sql"


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
