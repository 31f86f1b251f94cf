"""Answer cache: normalisation, TTL, per-tenant LRU, feedback eviction, aliases, snapshots (tables and properties)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ConfigError, ValidationError
from selfevolve.routing.answer_cache import (OWNERS_PER_ENTRY, AnswerCache, Entry, cache_key, from_settings,
                                             normalise)

TTL = 30


def _e(qid: str, ts: int = 0, model: str = "m", answer: str | None = None, cost: float = 0.01) -> Entry:
    return Entry(qid, model, answer if answer is not None else f"answer of {qid}", ts, cost)


def _cache(size: int = 2, ttl: int = TTL, min_quality: float = 0.5) -> AnswerCache:
    return AnswerCache(size, ttl, min_quality)


# --- normalise and cache_key ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, want", [
    ("  Hello   World ", "hello world"),            # case, runs of spaces, ends
    ("a\tb\nc\r\n d", "a b c d"),                   # any whitespace is one space
    ("a\u00a0b\u2003c", "a b c"),                   # no-break and em spaces (NFKC makes them spaces)
    ("Straße", "strasse"),                          # casefold, not lower()
    ("ﬁle", "file"),                                # NFKC ligature
    ("Ｆｕｌｌ ｗｉｄｔｈ", "full width"),             # NFKC full-width forms
    ("e\u0301te\u0301", "été"),                     # combining accents composed
    ("zero\u200bwidth\u00adsoft\ufeff", "zerowidthsoft"),  # invisible format characters dropped
    ("x²", "x2"),                                   # NFKC folds superscripts: accepted, same question
    ("ß\u0301", "s\u015b"),                          # NFKC after casefold too: "ss\u0301" composes
])
def test_normalise_table(raw, want):
    assert normalise(raw) == want


@pytest.mark.parametrize("a, b", [
    ("2+2?", "2-2?"), ("what is 2+2", "what is 2+3"), ("résumé", "resume"), ("hello.", "hello"),
    ("a b", "ab"), ("C++", "C#"), ("1,000", "1.000"), ("is it?", "is it!"), ("(a)", "[a]"),
])
def test_distinct_questions_never_collide(a, b):
    assert normalise(a) != normalise(b) and cache_key(a) != cache_key(b)


def test_cache_key_is_32_hex_of_sha256_of_the_normal_form():
    assert cache_key("  HELLO\tworld ") == hashlib.sha256(b"hello world").hexdigest()[:32]
    assert cache_key("hello world") == "b94d27b9934d3e08a52e52d7da7dabfa"  # stable across runs and machines


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_normalise_is_a_fixed_point_and_keys_follow_it(text):
    once = normalise(text)
    assert normalise(once) == once
    assert cache_key(text) == cache_key(once)
    assert once == once.strip() and "  " not in once


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from([" ", "\t", "\n", "\u00a0", "\u3000"]))
def test_padding_and_doubled_spaces_do_not_matter(text, space):
    assert normalise(space + text.replace(" ", " " + space) + space) == normalise(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_lowercase + string.digits + string.punctuation, min_size=1),
       st.text(alphabet=string.ascii_lowercase + string.digits + string.punctuation, min_size=1))
def test_normal_ascii_is_kept_as_is_so_distinct_texts_never_collide(a, b):
    assert normalise(a) == a
    assert (cache_key(a) == cache_key(b)) == (a == b)
    assert normalise(a.upper()) == a


# --- lookup, TTL, tenants ------------------------------------------------------------------------------------

@pytest.mark.parametrize("now, hit", [(100, True), (100 + TTL - 1, True), (100 + TTL, True), (100 + TTL + 1, False),
                                      (99, True)])
def test_ttl_is_inclusive_in_event_time(now, hit):
    c = _cache()
    c.put("t", "k", _e("q", ts=100))
    assert (c.lookup("t", "k", now) is not None) == hit


def test_an_expired_entry_is_dropped_not_just_hidden():
    c = _cache()
    c.put("t", "k", _e("q", ts=100))
    assert c.lookup("t", "k", 100 + TTL + 1) is None
    assert c.lookup("t", "k", 100) is None  # an earlier clock does not bring it back: it is gone
    assert (c.stats.evictions_ttl, c.stats.misses, c.stats.hits) == (1, 2, 0)


def test_tenants_never_see_each_others_entries():
    c = _cache()
    c.put("a", "k", _e("q"))
    assert c.lookup("b", "k", 0) is None
    assert c.lookup("a", "k", 0) == _e("q")
    assert c.feedback("b", "q", 0.0) is False and c.lookup("a", "k", 0) == _e("q")


def test_size_zero_is_off():
    c = _cache(size=0)
    c.put("t", "k", _e("q"))
    c.alias("t", "q2", "k")
    assert c.lookup("t", "k", 0) is None and c.stats.puts == 0 and c.to_json()["tenants"] == {}


def test_the_latest_delivery_wins():
    c = _cache()
    c.put("t", "k", _e("q1", ts=0))
    c.put("t", "k", _e("q2", ts=5))
    assert c.lookup("t", "k", 5) == _e("q2", ts=5)


# --- LRU: recency is puts and hits, in call order ------------------------------------------------------------

@pytest.mark.parametrize("ops, kept", [
    ("put a, put b, put c", {"b", "c"}),                       # a was least recent
    ("put a, put b, hit a, put c", {"a", "c"}),                # the hit made a recent
    ("put a, put b, put a, put c", {"a", "c"}),                # a re-put too
    ("put a, put b, peek a, put c", {"b", "c"}),               # a peek is no use
    ("put a, put b, alias a, put c", {"a", "c"}),              # a repeat answered from a is a use
])
def test_least_recently_used_goes_first(ops, kept):
    c = _cache(size=2)
    for op in ops.split(", "):
        verb, key = op.split()
        if verb == "put":
            c.put("t", key, _e(f"q{key}"))
        elif verb == "hit":
            assert c.lookup("t", key, 0) is not None
        elif verb == "peek":
            assert c.peek("t", key, 0) is not None
        else:
            c.alias("t", f"r{key}", key)
    assert {k for k in "abc" if c.peek("t", k, 0)} == kept
    assert c.stats.evictions_size == 1


def test_the_bound_is_per_tenant():
    c = _cache(size=1)
    c.put("a", "k", _e("q1"))
    c.put("b", "k", _e("q2"))
    assert c.peek("a", "k", 0) and c.peek("b", "k", 0) and c.stats.evictions_size == 0


def test_peek_changes_nothing():
    c = _cache()
    c.put("t", "k", _e("q", ts=0))
    before = c.to_json()
    assert c.peek("t", "k", 0) is not None and c.peek("t", "k", TTL + 1) is None and c.peek("t", "x", 0) is None
    assert c.to_json() == before


# --- feedback ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quality, evicts", [(0.0, True), (0.49, True), (0.5, False), (1.0, False), (math.nan, False)])
def test_a_verdict_below_min_quality_evicts(quality, evicts):
    c = _cache(min_quality=0.5)
    c.put("t", "k", _e("q"))
    assert c.feedback("t", "q", quality) is evicts
    assert (c.peek("t", "k", 0) is None) is evicts
    assert c.stats.evictions_feedback == int(evicts)


def test_a_verdict_on_a_repeat_evicts_the_answer_it_got():
    c = _cache()
    c.put("t", "k", _e("q"))
    assert c.lookup("t", "k", 1) is not None
    c.alias("t", "r", "k")
    assert c.feedback("t", "r", 0.0) is True and c.peek("t", "k", 1) is None


@pytest.mark.parametrize("judged", ["q1", "r1"])
def test_a_verdict_on_an_answer_no_longer_cached_spares_the_new_one(judged):
    c = _cache()
    c.put("t", "k", _e("q1"))
    c.alias("t", "r1", "k")  # r1 got q1's answer
    c.put("t", "k", _e("q2"))  # a second delivery of the same text replaced it
    assert c.feedback("t", judged, 0.0) is False and c.peek("t", "k", 0) == _e("q2")


def test_an_alias_whose_answer_was_replaced_before_it_arrived_is_dropped():
    c = _cache()
    c.put("t", "k", _e("q1"))
    c.put("t", "k", _e("q2"))
    c.alias("t", "r", "k", origin="q1")  # r was answered with q1's answer, no longer the cached one
    assert c.feedback("t", "r", 0.0) is False and c.peek("t", "k", 0) == _e("q2")
    c.alias("t", "s", "k", origin="q2")
    assert c.feedback("t", "s", 0.0) is True


def test_a_verdict_on_another_models_answer_is_ignored():
    c = _cache()
    c.put("t", "k", _e("q", model="big"))
    assert c.feedback("t", "q", 0.0, model="small") is False and c.peek("t", "k", 0)
    assert c.feedback("t", "q", 0.0, model="big") is True


def test_a_new_answer_may_be_cached_after_an_eviction():
    c = _cache()
    c.put("t", "k", _e("q1"))
    assert c.feedback("t", "q1", 0.0)
    c.put("t", "k", _e("q2"))
    assert c.lookup("t", "k", 0) == _e("q2")
    assert c.feedback("t", "q1", 0.0) is False and c.peek("t", "k", 0)  # the old verdict's query is spent


def test_unknown_queries_and_tenants_evict_nothing():
    c = _cache()
    c.put("t", "k", _e("q"))
    assert not c.feedback("t", "nobody", 0.0) and not c.feedback("u", "q", 0.0) and c.peek("t", "k", 0)


def test_owners_are_bounded_oldest_forgotten_first():
    c = _cache(size=1)
    c.put("t", "k", _e("q"))
    for i in range(OWNERS_PER_ENTRY):  # q plus these: one more than the bound
        c.alias("t", f"r{i}", "k")
    assert len(c.to_json()["tenants"]["t"]["owners"]) == OWNERS_PER_ENTRY
    assert c.feedback("t", "q", 0.0) is False  # forgotten
    assert c.feedback("t", f"r{OWNERS_PER_ENTRY - 1}", 0.0) is True


# --- snapshots, settings -------------------------------------------------------------------------------------

def _ops():
    tenant, key, qid = st.sampled_from("ab"), st.sampled_from(["k0", "k1", "k2", "k3"]), st.sampled_from("qrstuv")
    return st.lists(st.one_of(
        st.tuples(st.just("put"), tenant, key, qid, st.integers(0, 100), st.sampled_from(["m1", "m2"])),
        st.tuples(st.just("lookup"), tenant, key, st.integers(0, 140)),
        st.tuples(st.just("alias"), tenant, qid, key, st.sampled_from([None, "q", "r"])),
        st.tuples(st.just("feedback"), tenant, qid, st.sampled_from([0.0, 0.4, 0.6, 1.0]),
                  st.sampled_from([None, "m1", "m2"]))), max_size=40)


def _apply(c: AnswerCache, ops) -> list:
    out = []
    for op in ops:
        if op[0] == "put":
            c.put(op[1], op[2], Entry(op[3], op[5], f"{op[3]}@{op[4]}", op[4], 0.5))
        else:
            out.append(getattr(c, op[0])(*op[1:]))
    return out


def _probe(c: AnswerCache) -> list:
    """What the cache answers now: every lookup at a few times, then every verdict (on copies: both mutate)."""
    hits = [copy.deepcopy(c).lookup(t, k, now) for t in "ab" for k in ["k0", "k1", "k2", "k3"] for now in (0, 70, 140)]
    verdicts = [copy.deepcopy(c).feedback(t, q, 0.0) for t in "ab" for q in "qrstuv"]
    return hits + verdicts


@settings(max_examples=300, deadline=None)
@given(_ops(), st.integers(0, 3))
def test_a_snapshot_restores_a_cache_that_answers_alike(ops, size):
    c = _cache(size=size)
    _apply(c, ops)
    data = json.loads(json.dumps(c.to_json()))
    back = AnswerCache.from_json(data, size, TTL, 0.5)
    assert _probe(back) == _probe(c) and back.stats == c.stats and back.to_json() == c.to_json()
    assert all(len(s["entries"]) <= size for s in data["tenants"].values())


@settings(max_examples=300, deadline=None)
@given(_ops())
def test_one_tenants_traffic_never_changes_anothers_answers(ops):
    both, alone = _cache(), _cache()
    _apply(both, ops)
    _apply(alone, [op for op in ops if op[1] == "a"])
    assert _probe(both)[:12] == _probe(alone)[:12]  # tenant a's lookups
    assert _probe(both)[24:30] == _probe(alone)[24:30]  # tenant a's verdicts


@settings(max_examples=200, deadline=None)
@given(_ops())
def test_peek_answers_as_lookup_would(ops):
    c = _cache()
    _apply(c, ops)
    for t in "ab":
        for k in ["k0", "k1", "k2", "k3"]:
            for now in (0, 70, 140):
                assert c.peek(t, k, now) == copy.deepcopy(c).lookup(t, k, now)


def test_a_smaller_size_keeps_the_most_recent_entries():
    c = _cache(size=3)
    for k in "abc":
        c.put("t", k, _e(f"q{k}"))
    c.lookup("t", "a", 0)
    back = AnswerCache.from_json(c.to_json(), 2, TTL, 0.5)
    assert [k for k in "abc" if back.peek("t", k, 0)] == ["a", "c"]


def _good() -> dict:
    c = _cache()
    c.put("t", "k", _e("q"))
    return c.to_json()


DROP = object()


def _set(path, value):
    """An edit of the good snapshot: the item at path (keys and indexes) set, appended or dropped (DROP)."""
    def edit(data):
        *head, last = path
        for step in head:
            data = data[step]
        if value is DROP:
            del data[last]
        elif isinstance(data, list) and last == len(data):
            data.append(value)
        else:
            data[last] = value
    return edit


ENTRY = ("tenants", "t", "entries", 0, 1)


@pytest.mark.parametrize("whole", [None, [], "x", {}])
def test_a_snapshot_that_is_not_one_is_refused(whole):
    with pytest.raises(ValidationError):
        AnswerCache.from_json(whole, 2, TTL, 0.5)


@pytest.mark.parametrize("edit", [
    _set(("version",), 2), _set(("stats",), DROP), _set(("stats", "hits"), -1), _set(("stats", "puts"), True),
    _set(("tenants",), []), _set(("tenants", "t", "owners"), DROP),
    _set((*ENTRY, "ts_ms"), "0"), _set((*ENTRY, "cost"), None), _set((*ENTRY, "answer"), 3),
    _set((*ENTRY, "extra"), 1), _set((*ENTRY, "model"), DROP),
    _set(("tenants", "t", "entries", 1), ["k", {"query_id": "q", "model": "m", "answer": "a", "ts_ms": 0,
                                               "cost": 0.0}]),  # key listed twice
    _set(("tenants", "t", "entries", 1), ["k2"]),
    _set(("tenants", "t", "owners", 1), ["q", "k"]),
    _set(("tenants", "t", "owners", 1), ["q", "k", "q"]),  # query id listed twice
    _set(("tenants", "t", "owners", 0, 1), 7),
])
def test_a_malformed_snapshot_is_refused(edit):
    data = _good()
    edit(data)
    with pytest.raises(ValidationError):
        AnswerCache.from_json(data, 2, TTL, 0.5)


def test_the_good_snapshot_used_above_loads():
    assert AnswerCache.from_json(_good(), 2, TTL, 0.5).peek("t", "k", 0) == _e("q")


@pytest.mark.parametrize("size, ttl", [(-1, 10), (1, 0), (1, -5)])
def test_nonsense_settings_are_refused(size, ttl):
    with pytest.raises(ConfigError):
        AnswerCache(size, ttl, 0.5)


def test_from_settings_converts_the_ttl_to_milliseconds():
    c = from_settings(Settings(answer_cache_size=7, answer_cache_ttl_s=2.5, answer_cache_min_quality=0.3))
    assert (c.size, c.ttl_ms, c.min_quality) == (7, 2500, 0.3)
    assert from_settings(Settings(answer_cache_ttl_s=1e-6)).ttl_ms == 1
