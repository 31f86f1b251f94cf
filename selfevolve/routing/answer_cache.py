"""Per-tenant cache of delivered answers to exact repeats: the "cached" tier, at no model cost (pure, event time)."""

from __future__ import annotations

import hashlib
import unicodedata
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields

from selfevolve.config import Settings
from selfevolve.errors import ConfigError, ValidationError

# Queries remembered per cached entry, so that a verdict finds the answer it judges: a verdict comes after its
# delivery, and a hot entry answers many repeats in that time.
OWNERS_PER_ENTRY = 4
SNAPSHOT_VERSION = 1


def normalise(text: str) -> str:
    """What two queries must share to be one question: invisible format characters (zero-width space, soft
    hyphen, BOM) dropped, NFKC, case folded, whitespace runs made one space, ends stripped. Punctuation, digits
    and accents stay: "2+2?" is not "2-2?", "résumé" is not "resume"."""
    if text.isascii():  # most queries: no format character, NFKC is the identity and casefold is lower()
        return " ".join(text.lower().split())
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    # NFKC again after casefold: folding can leave a string NFKC would change, and a key must be a fixed point.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", visible).casefold())
    return " ".join(folded.split())


def cache_key(text: str) -> str:
    """32 hex characters of sha256(normalise(text)): the same on every worker and every run."""
    return hashlib.sha256(normalise(text).encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    """A delivered answer: whose it was, which model wrote it, when (event time) and what it cost then."""

    query_id: str
    model: str
    answer: str
    ts_ms: int
    cost: float


@dataclass
class Stats:
    """Counters since the cache was made (a snapshot carries them)."""

    hits: int = 0
    misses: int = 0
    puts: int = 0
    evictions_feedback: int = 0
    evictions_ttl: int = 0
    evictions_size: int = 0


@dataclass
class _Shelf:
    """One tenant's part: entries least recently used first; owners oldest first, query id -> (key, the query
    id whose answer it got), so a verdict evicts only while that answer is still the cached one."""

    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    owners: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict)


class AnswerCache:
    """Answers by (tenant, cache_key) within ttl_ms of their delivery; a verdict below min_quality evicts."""

    def __init__(self, size_per_tenant: int, ttl_ms: int, min_quality: float) -> None:
        if size_per_tenant < 0 or ttl_ms <= 0:
            raise ConfigError(f"answer cache needs size >= 0 and ttl > 0, got {size_per_tenant}, {ttl_ms} ms")
        self.size, self.ttl_ms, self.min_quality = size_per_tenant, ttl_ms, min_quality
        self.stats = Stats()
        self._shelves: dict[str, _Shelf] = {}

    def put(self, tenant: str, key: str, entry: Entry) -> None:
        """A model's answer was delivered: it becomes the cached one for key (the latest delivery wins)."""
        if self.size == 0:
            return
        shelf = self._shelves.setdefault(tenant, _Shelf())
        shelf.entries[key] = entry
        shelf.entries.move_to_end(key)
        self.stats.puts += 1
        while len(shelf.entries) > self.size:
            shelf.entries.popitem(last=False)
            self.stats.evictions_size += 1
        self._own(shelf, entry.query_id, key, entry.query_id)

    def lookup(self, tenant: str, key: str, now_ms: int) -> Entry | None:
        """The live entry at key, made most recent; an expired one is dropped. Counts a hit or a miss."""
        shelf = self._shelves.get(tenant)
        entry = self.peek(tenant, key, now_ms)
        if entry is None:
            self.stats.misses += 1
            if shelf is not None and key in shelf.entries:
                del shelf.entries[key]
                self.stats.evictions_ttl += 1
            return None
        self.stats.hits += 1
        shelf.entries.move_to_end(key)
        return entry

    def peek(self, tenant: str, key: str, now_ms: int) -> Entry | None:
        """lookup without changing anything (no recency, no expiry, no counts): for a reader of a replica
        that only the history topic may change."""
        shelf = self._shelves.get(tenant)
        entry = shelf.entries.get(key) if shelf is not None else None
        return entry if entry is not None and now_ms - entry.ts_ms <= self.ttl_ms else None

    def alias(self, tenant: str, query_id: str, key: str, origin: str | None = None) -> None:
        """query_id was answered from the entry at key, so a verdict on it judges that entry; the reuse makes
        the entry most recent. origin (the delivery's cached_from) is the query whose answer was reused: if
        key holds another answer by now, the alias is dropped (its answer is no longer cached)."""
        shelf = self._shelves.get(tenant)
        entry = shelf.entries.get(key) if shelf is not None else None
        if entry is None or (origin is not None and entry.query_id != origin):
            return
        shelf.entries.move_to_end(key)
        self._own(shelf, query_id, key, entry.query_id)

    def feedback(self, tenant: str, query_id: str, quality: float, model: str | None = None) -> bool:
        """A verdict on query_id's answer; below min_quality it evicts that answer if still cached (True).
        model, if given, must be the cached answer's model: a verdict on another model's answer is ignored."""
        shelf = self._shelves.get(tenant)
        if shelf is None or query_id not in shelf.owners:
            return False
        key, origin = shelf.owners[query_id]
        entry = shelf.entries.get(key)
        # `not <` so that a NaN quality (no verdict) evicts nothing.
        if entry is None or entry.query_id != origin or not quality < self.min_quality:
            return False
        if model is not None and model != entry.model:
            return False
        del shelf.entries[key]
        self.stats.evictions_feedback += 1
        return True

    def _own(self, shelf: _Shelf, query_id: str, key: str, origin: str) -> None:
        shelf.owners[query_id] = (key, origin)
        shelf.owners.move_to_end(query_id)
        while len(shelf.owners) > self.size * OWNERS_PER_ENTRY:
            shelf.owners.popitem(last=False)

    def to_json(self) -> dict:
        """A JSON-able snapshot: every tenant's entries and owners in their order, and the counters."""
        return {"version": SNAPSHOT_VERSION, "stats": asdict(self.stats),
                "tenants": {t: {"entries": [[k, asdict(e)] for k, e in s.entries.items()],
                                "owners": [[q, k, o] for q, (k, o) in s.owners.items()]}
                            for t, s in self._shelves.items()}}

    @classmethod
    def from_json(cls, data: dict, size_per_tenant: int, ttl_ms: int, min_quality: float) -> AnswerCache:
        """The cache to_json saved, under these settings (a smaller size keeps the most recent entries)."""
        cache = cls(size_per_tenant, ttl_ms, min_quality)
        try:
            if data["version"] != SNAPSHOT_VERSION:
                raise ValidationError(f"answer cache snapshot version {data['version']!r}, not {SNAPSHOT_VERSION}")
            cache.stats = Stats(**{f.name: _count(data["stats"][f.name]) for f in fields(Stats)})
            for tenant, raw in data["tenants"].items():
                shelf = _shelf(_text(tenant), raw)
                while len(shelf.entries) > cache.size:
                    shelf.entries.popitem(last=False)
                while len(shelf.owners) > cache.size * OWNERS_PER_ENTRY:
                    shelf.owners.popitem(last=False)
                cache._shelves[tenant] = shelf
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValidationError(f"malformed answer cache snapshot: {e!r}") from e
        return cache


def _shelf(tenant: str, raw: dict) -> _Shelf:
    shelf = _Shelf()
    for key, entry in raw["entries"]:
        shelf.entries[_text(key)] = Entry(_text(entry["query_id"]), _text(entry["model"]), _text(entry["answer"]),
                                          _count(entry["ts_ms"], signed=True), _number(entry["cost"]))
        if len(entry) != len(fields(Entry)):
            raise ValidationError(f"tenant {tenant!r}: entry fields {sorted(entry)}")
    for query_id, key, origin in raw["owners"]:
        shelf.owners[_text(query_id)] = (_text(key), _text(origin))
    if len(shelf.entries) != len(raw["entries"]) or len(shelf.owners) != len(raw["owners"]):
        raise ValidationError(f"tenant {tenant!r}: a key or query id is listed twice")
    return shelf


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"expected a string, got {value!r}")
    return value


def _count(value: object, signed: bool = False) -> int:
    # bool is an int to Python, never to a snapshot.
    if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and not signed):
        raise ValidationError(f"expected a {'' if signed else 'non-negative '}integer, got {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"expected a number, got {value!r}")
    return float(value)


def from_settings(settings: Settings, snapshot: dict | None = None) -> AnswerCache:
    """The cache settings ask for (answer_cache_ttl_s in event-time milliseconds, at least 1), empty or
    restored from a to_json() snapshot."""
    args = (settings.answer_cache_size, max(1, round(settings.answer_cache_ttl_s * 1000)),
            settings.answer_cache_min_quality)
    return AnswerCache(*args) if snapshot is None else AnswerCache.from_json(snapshot, *args)
