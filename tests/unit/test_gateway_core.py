"""The gateway's pure rules: key hashing and the key table, query ids, spend per day, token buckets, OpenAI shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from selfevolve.errors import ValidationError
from selfevolve.wire import openai_shapes as shapes
from selfevolve.wire.apikeys import (DAY_MS, KeyEntry, KeyTable, SpendLedger, TokenBucket, hash_key, key_id,
                                     key_id_of, query_id)
from selfevolve.wire.openai_shapes import ApiError

KEY = "sk-se-" + "A" * 43
MODELS = ("gpt-4-1106-preview", "mistral-7b-chat")


def _table(key: str = KEY, tenant: str = "acme") -> KeyTable:
    return KeyTable().add(KeyEntry(hash_key(key), tenant, 0))


def test_the_table_finds_a_key_by_its_hash_and_holds_no_key():
    table = _table()
    assert table.lookup(KEY).tenant == "acme"
    assert KEY not in str(table.to_json())
    assert KeyTable.from_json(table.to_json()) == table


@pytest.mark.parametrize("presented", ["", "Bearer", KEY + "x", KEY[:-1] + "B", "sk-se-short", "sk-" + "A" * 45,
                                       KEY.lower(), " " + KEY])
def test_a_wrong_key_finds_nothing(presented):
    assert _table().lookup(presented) is None


def test_a_revoked_key_finds_nothing_and_revoking_needs_one_match():
    table = _table().add(KeyEntry(hash_key("sk-se-" + "B" * 43), "beta", 0))
    table, gone = table.revoke(key_id(hash_key(KEY)))
    assert gone.tenant == "acme" and table.lookup(KEY) is None
    assert table.lookup("sk-se-" + "B" * 43).tenant == "beta"
    with pytest.raises(ValidationError):
        table.revoke("abc")  # too short to name one key


@pytest.mark.parametrize("bad", [{"key_hash": "x", "tenant": "a"}, {"key_hash": "0" * 64, "tenant": "A B"},
                                 {"key_hash": "0" * 64, "tenant": "a", "budget_usd_day": -1},
                                 {"key_hash": "0" * 64, "tenant": "a", "rate_per_min": "fast"}])
def test_a_malformed_entry_is_refused(bad):
    with pytest.raises(ValidationError):
        KeyEntry.from_json(bad)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_query_ids_are_a_function_of_key_and_idempotency_key(a, b):
    h1, h2 = hash_key(KEY), hash_key("sk-se-" + "C" * 43)
    assert query_id(h1, a) == query_id(h1, a)
    assert key_id_of(query_id(h1, a)) == key_id(h1)
    assert (query_id(h1, a) == query_id(h1, b)) == (a == b)
    assert query_id(h1, a) != query_id(h2, a)  # idempotency keys are scoped per API key


@pytest.mark.parametrize("qid", ["q1", "gw-123", "gw-" + "g" * 12 + "-" + "0" * 32, "gw-" + "0" * 12 + "-" + "0" * 31])
def test_other_query_ids_name_no_key(qid):
    assert key_id_of(qid) is None


def test_spend_is_per_key_and_utc_day_and_each_query_counts_once():
    h = hash_key(KEY)
    ledger, q1, q2 = SpendLedger(), query_id(h, "1"), query_id(h, "2")
    day = 20_000 * DAY_MS
    assert ledger.add("acme", q1, 0.25, day + 5)
    assert not ledger.add("acme", q1, 0.25, day + 6)  # a re-delivered answer
    assert not ledger.add("acme", "q-not-gateway", 9.0, day)
    ledger.add("acme", q2, 0.5, day + DAY_MS - 1)
    assert ledger.today(key_id(h), day + 10) == pytest.approx(0.75)
    assert ledger.today(key_id(h), day + DAY_MS) == 0.0  # midnight UTC resets it
    assert ledger.over(key_id(h), 0.75, day) and not ledger.over(key_id(h), 0.76, day)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=6), st.floats(0, 10)), max_size=30))
def test_spend_is_the_sum_of_distinct_queries(items):
    h = hash_key(KEY)
    ledger = SpendLedger()
    for idem, cost in items:
        ledger.add("acme", query_id(h, idem), cost, 0)
    first = {}
    for idem, cost in items:
        first.setdefault(idem, cost)
    assert ledger.today(key_id(h), 0) == pytest.approx(sum(first.values()))


def test_a_bucket_allows_a_minutes_burst_then_refills_with_time():
    b = TokenBucket(rate_per_min=3)
    assert [b.take(0)[0] for _ in range(4)] == [True, True, True, False]
    ok, wait = b.take(0)
    assert not ok and wait == pytest.approx(20.0)
    assert b.take(20_000)[0] and not b.take(20_000)[0]


@hsettings(max_examples=50)
@given(st.floats(1, 1000), st.lists(st.integers(0, 120_000), min_size=1, max_size=60))
def test_a_bucket_never_allows_more_than_burst_plus_rate(rate, times):
    b = TokenBucket(rate)
    times = sorted(times)
    allowed = sum(b.take(t)[0] for t in times)
    assert allowed <= max(1.0, rate) + rate * (times[-1] - times[0]) / 60_000 + 1e-6


def _chat(**kw) -> dict:
    return {"model": "selfevolve/auto", "messages": [{"role": "user", "content": "What is 2+2?"}], **kw}


def test_a_chat_request_becomes_a_query():
    c = shapes.parse_chat(_chat(metadata={"sample_id": "s1"}), MODELS, 1000)
    assert (c.text, c.pinned, c.stream, c.metadata) == ("What is 2+2?", None, False, {"sample_id": "s1"})
    assert shapes.parse_chat(_chat(model=MODELS[0], stream=True), MODELS, 1000).pinned == MODELS[0]
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert shapes.parse_chat(_chat(messages=convo), MODELS, 1000).text == "system: Be brief.\n\nuser: Hi"


@pytest.mark.parametrize("body,status", [
    ([], 400), (_chat(model="gpt-9"), 404), (_chat(messages=[]), 400), (_chat(messages="hi"), 400),
    (_chat(messages=[{"role": "wizard", "content": "x"}]), 400), (_chat(messages=[{"role": "user", "content": 3}]), 400),
    (_chat(messages=[{"role": "assistant", "content": "x"}]), 400), (_chat(n=2), 400), (_chat(stream="yes"), 400),
    (_chat(messages=[{"role": "user", "content": "x" * 1001}]), 413), (_chat(metadata={"pin_model": "x"}), 400),
    (_chat(metadata={"a": 1}), 400), (_chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400),
])
def test_a_bad_request_is_refused_with_its_status(body, status):
    with pytest.raises(ApiError) as e:
        shapes.parse_chat(body, MODELS, 1000)
    assert e.value.status == status
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


ANSWER = {"query_id": "gw-q", "tenant": "acme", "model": "m1", "answer": "four " * 40, "composite": 1.0,
          "cost_usd": 0.00125, "strategy": "targeted", "models_called": ["m1"], "fallbacks": [], "domain": 0,
          "latency_ms": 3.0, "ts_ms": 1_700_000_000_000}


def test_an_answer_becomes_a_completion_with_usage_and_headers():
    out = shapes.completion(ANSWER, "What is 2+2?", 1)
    assert out["object"] == "chat.completion" and out["model"] == "m1" and out["id"] == "chatcmpl-gw-q"
    assert out["choices"][0]["message"]["content"] == ANSWER["answer"]
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    h = shapes.answer_headers(ANSWER)
    assert h["x-selfevolve-model"] == "m1" and float(h["x-selfevolve-cost-usd"]) == 0.00125


@given(st.text(max_size=300), st.booleans())
def test_chunks_reassemble_the_answer(text, usage):
    chunks = shapes.chunks({**ANSWER, "answer": text}, "q", 1, usage, piece_chars=7)
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(deltas) == text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] == "stop"]
    assert len(finals) == 1 and (("usage" in chunks[-1]) == usage)


def test_an_answer_no_model_gave_is_a_502():
    assert shapes.no_answer_error(ANSWER) is None
    assert shapes.no_answer_error({**ANSWER, "model": ""}).status == 502


@pytest.mark.parametrize("body,ok", [({"id": "chatcmpl-gw-q", "quality": 1}, True), ({"id": "gw-q", "quality": 0.5,
                                     "model": "m"}, True), ({"id": "q", "quality": 2}, False),
                                     ({"quality": 1}, False), ({"id": "q", "quality": True}, False), ("x", False)])
def test_feedback_bodies(body, ok):
    if ok:
        assert shapes.parse_feedback(body)[0] == "gw-q"
    else:
        with pytest.raises(ApiError):
            shapes.parse_feedback(body)
