"""Tenant names and query identity: a query is (tenant, query id) everywhere, one canonical key per query."""

from __future__ import annotations

import re

from selfevolve.errors import ValidationError

DEFAULT_TENANT = "default"
# Also a topic-name suffix and a SCRAM user suffix (tenant-<T>): no dots, slashes or upper case.
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SEP = "/"  # cannot occur in a tenant name, so the first one in a key ends the tenant


def check_tenant(name: object) -> str:
    """Return name if it is a valid tenant name, else raise ValidationError saying why."""
    if not isinstance(name, str) or not TENANT_RE.fullmatch(name):
        raise ValidationError(f"invalid tenant name {name!r}: expected 1-64 characters of a-z, 0-9, '_' "
                              "and '-', starting with a letter or digit")
    return name


def query_key(tenant: str, query_id: str) -> str:
    """The canonical key of a query: its Kafka key on queries, decisions, requests and responses (so one
    query's events share a partition), its scorer state key and its routing-history key."""
    return f"{tenant}{SEP}{query_id}"


def split_key(key: str) -> tuple[str, str]:
    """(tenant, query id) of a canonical key; the id may itself contain the separator."""
    tenant, sep, query_id = key.partition(SEP)
    if not sep:
        raise ValidationError(f"{key!r} is not a tenant{SEP}query-id key")
    return check_tenant(tenant), query_id


def record_key(record: dict) -> str:
    """The canonical key of an event record that carries query_id and (maybe) tenant."""
    return query_key(record.get("tenant") or DEFAULT_TENANT, record["query_id"])
