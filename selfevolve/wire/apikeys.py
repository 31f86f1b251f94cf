"""Gateway API keys, budgets and rate limits as pure rules: hashing, the key table, spend per day, token buckets."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from selfevolve.errors import ValidationError
from selfevolve.wire.tenancy import check_tenant

KEY_PREFIX = "sk-se-"
# What follows the prefix: url-safe base64 of 32 random bytes (streams/gateway_keys.py draws them).
KEY_RE = re.compile(r"^sk-se-[A-Za-z0-9_-]{32,64}$")
KEY_ID_LEN = 12  # hex digits of the hash that name a key in query ids and logs (not enough to find the key)
QUERY_ID_RE = re.compile(r"^gw-([0-9a-f]{12})-[0-9a-f]{32}$")
DAY_MS = 86_400_000


def hash_key(key: str) -> str:
    """SHA-256 of the key. A key is 256 random bits, so a fast hash is enough: there is nothing to brute-force
    (a slow password hash protects low-entropy secrets, and would cost every request milliseconds)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(key_hash: str) -> str:
    return key_hash[:KEY_ID_LEN]


def well_formed(key: str) -> bool:
    return isinstance(key, str) and bool(KEY_RE.fullmatch(key))


@dataclass(frozen=True)
class KeyEntry:
    """One key as stored: its hash (never the key), its tenant, and its own limits (None: the defaults)."""

    key_hash: str
    tenant: str
    created_ms: int
    budget_usd_day: float | None = None
    rate_per_min: float | None = None
    name: str = ""
    revoked: bool = False

    @property
    def key_id(self) -> str:
        return key_id(self.key_hash)

    def to_json(self) -> dict:
        return {"key_hash": self.key_hash, "tenant": self.tenant, "created_ms": self.created_ms,
                "budget_usd_day": self.budget_usd_day, "rate_per_min": self.rate_per_min, "name": self.name,
                "revoked": self.revoked}

    @classmethod
    def from_json(cls, data: dict) -> KeyEntry:
        h = data.get("key_hash")
        if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h):
            raise ValidationError(f"a key entry needs a 64-hex-digit key_hash, got {str(h)[:80]!r}")
        return cls(h, check_tenant(data.get("tenant")), int(data.get("created_ms", 0)),
                   _opt_float(data.get("budget_usd_day")), _opt_float(data.get("rate_per_min")),
                   str(data.get("name", "")), bool(data.get("revoked", False)))


def _opt_float(v: object) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValidationError(f"a limit must be a number >= 0 or null, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class KeyTable:
    """Every key by hash; lookups compare hashes, so the table holds nothing a thief could sign in with."""

    entries: dict[str, KeyEntry] = field(default_factory=dict)

    def lookup(self, key: str) -> KeyEntry | None:
        """The live entry of a presented key, or None (malformed, unknown or revoked: all alike to a caller)."""
        if not well_formed(key):
            return None
        entry = self.entries.get(hash_key(key))
        return None if entry is None or entry.revoked else entry

    def add(self, entry: KeyEntry) -> KeyTable:
        return KeyTable({**self.entries, entry.key_hash: entry})

    def revoke(self, prefix: str) -> tuple[KeyTable, KeyEntry]:
        """Revoke the one key whose id (or hash) starts with prefix."""
        found = [e for h, e in self.entries.items() if h.startswith(prefix)] if len(prefix) >= 6 else []
        if len(found) != 1:
            raise ValidationError(f"{len(found)} keys match {prefix!r}: give at least 6 hex digits of one key id")
        gone = replace(found[0], revoked=True)
        return self.add(gone), gone

    def tenants(self) -> list[str]:
        return sorted({e.tenant for e in self.entries.values() if not e.revoked})

    def to_json(self) -> dict:
        return {"version": 1, "keys": [e.to_json() for e in self.entries.values()]}

    @classmethod
    def from_json(cls, data: dict) -> KeyTable:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValidationError("a key table is {\"version\": 1, \"keys\": [...]}")
        return cls({e.key_hash: e for e in map(KeyEntry.from_json, data["keys"])})


def query_id(key_hash: str, idempotency_key: str) -> str:
    """The query id of a gateway request: the same (key, idempotency key) always names the same query, so a
    retry after a gateway died finds the first try's answer; the key's id in it lets any gateway charge an
    answer to its key from the answers topic alone. Idempotency keys are scoped per API key (as Stripe's)."""
    digest = hashlib.sha256(f"{key_hash}\n{idempotency_key}".encode("utf-8")).hexdigest()[:32]
    return f"gw-{key_id(key_hash)}-{digest}"


def key_id_of(query_id_: str) -> str | None:
    """The key id a gateway query id carries, or None for a query that did not come through a gateway."""
    m = QUERY_ID_RE.fullmatch(query_id_)
    return m.group(1) if m else None


def day_of(ts_ms: int) -> int:
    """The UTC day number of an event time: budgets reset at midnight UTC."""
    return ts_ms // DAY_MS


@dataclass
class SpendLedger:
    """USD charged per (key id, UTC day), folded from answers: every gateway reads the same answers topics, so
    every gateway computes the same spend (up to what it has read), with no shared store. A query is charged
    once, however often its answer is re-delivered. Days older than `keep_days` are dropped."""

    keep_days: int = 2
    spent: dict[tuple[str, int], float] = field(default_factory=dict)
    charged: OrderedDict = field(default_factory=OrderedDict)  # (tenant, query id) -> None, bounded
    charged_keep: int = 200_000

    def add(self, tenant: str, query_id_: str, cost_usd: float, ts_ms: int) -> bool:
        kid = key_id_of(query_id_)
        if kid is None or (tenant, query_id_) in self.charged:
            return False
        self.charged[(tenant, query_id_)] = None
        while len(self.charged) > self.charged_keep:
            self.charged.popitem(last=False)
        day = day_of(ts_ms)
        self.spent[(kid, day)] = self.spent.get((kid, day), 0.0) + max(0.0, float(cost_usd))
        for old in [k for k in self.spent if k[1] < day - self.keep_days + 1]:
            del self.spent[old]
        return True

    def today(self, kid: str, now_ms: int) -> float:
        return self.spent.get((kid, day_of(now_ms)), 0.0)

    def over(self, kid: str, budget_usd: float, now_ms: int) -> bool:
        """True once the key has spent its day's budget (a budget of 0 refuses everything)."""
        return self.today(kid, now_ms) >= budget_usd


@dataclass
class TokenBucket:
    """Requests per minute with a burst of one minute's worth; time is handed in (milliseconds)."""

    rate_per_min: float
    tokens: float = -1.0
    at_ms: int = 0

    def take(self, now_ms: int) -> tuple[bool, float]:
        """(allowed, seconds until the next token): refill by elapsed time, then take one if there is one."""
        cap = max(1.0, self.rate_per_min)
        if self.tokens < 0:
            self.tokens, self.at_ms = cap, now_ms
        elapsed = max(0, now_ms - self.at_ms) / 60_000.0
        self.tokens = min(cap, self.tokens + elapsed * self.rate_per_min)
        self.at_ms = max(self.at_ms, now_ms)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True, 0.0
        wait = (1.0 - self.tokens) * 60.0 / self.rate_per_min if self.rate_per_min > 0 else 60.0
        return False, wait
