"""Bring history tables made by an older ddl.sql to its current shape (ORDER BY key, columns), keeping rows.

`CREATE TABLE IF NOT EXISTS` leaves an existing table as it was, so a store created before issue #12 would
keep `ORDER BY query_id` (two tenants' same id collapsing into one row) and lack new columns (the sink's
insert would then fail). For each table whose sorting key or column set differs from the DDL, this renames
it to `<table>__pre`, creates it anew from the DDL, copies the columns both have (new ones take their
defaults: tenant 'default'), and drops the old one. A crash half-way leaves `<table>__pre`: the next run
drops the partial new table and copies again, so no row is lost.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

log = logging.getLogger("selfevolve.store")

_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*\((.*)\)\s*ENGINE\s*=\s*[^\n]+?\s*ORDER BY\s+(.+)$",
                     re.DOTALL)
OLD = "__pre"


def _key(expr: str) -> str:
    """A sorting key as comparable text: ClickHouse reports `tenant, query_id` for `(tenant, query_id)`."""
    return re.sub(r"[()`\s]", "", expr)


def table_spec(statement: str) -> tuple[str, str, list[str], str] | None:
    """(database, table, column names, sorting key) of a CREATE TABLE statement of ddl.sql, else None."""
    m = _CREATE.match(statement.strip())
    if m is None:
        return None
    columns = [line.strip().split()[0].strip("`") for line in m.group(3).splitlines() if line.strip()]
    return m.group(1), m.group(2), columns, _key(m.group(4))


def migrate(statements: list[str], command: Callable[[str], Any],
            query: Callable[[str], tuple[list[str], list[tuple]]]) -> list[str]:
    """Migrate every table of `statements` that exists in another shape; returns the tables migrated."""
    done = []
    for statement in statements:
        spec = table_spec(statement)
        if spec is None:
            continue
        db, table, columns, key = spec
        _, rows = query(f"SELECT name, sorting_key FROM system.tables WHERE database = '{db}' "
                        f"AND name IN ('{table}', '{table}{OLD}')")
        found = dict(rows)
        if f"{table}{OLD}" not in found:
            if table not in found:
                continue  # a new store: the DDL creates it
            have = {name for (name,) in query(f"SELECT name FROM system.columns WHERE database = '{db}' "
                                              f"AND table = '{table}'")[1]}
            if _key(found[table]) == key and set(columns) <= have:
                continue
            log.warning("migrating %s.%s (ORDER BY %s -> %s, columns %s)", db, table, found[table], key,
                        sorted(set(columns) - have))
            command(f"RENAME TABLE {db}.{table} TO {db}.{table}{OLD}")
        else:  # a migration that did not finish: start its copy again
            command(f"DROP TABLE IF EXISTS {db}.{table}")
        command(statement)
        keep = [n for (n,) in query(f"SELECT name FROM system.columns WHERE database = '{db}' AND table = "
                                    f"'{table}{OLD}' AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') "
                                    "ORDER BY position")[1] if n in columns]
        names = ", ".join(f"`{n}`" for n in keep)
        command(f"INSERT INTO {db}.{table} ({names}) SELECT {names} FROM {db}.{table}{OLD}")
        command(f"DROP TABLE {db}.{table}{OLD}")
        done.append(table)
    return done
