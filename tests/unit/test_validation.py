"""Query rules and the JSON query-line parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.wire.codec import Codec
from selfevolve.errors import ValidationError
from selfevolve.wire.validation import parse_query_line, validate_query

LIMIT = 32 * 1024
CODEC = Codec.from_dir()
OK = {"query_id": "q-1", "text": "What is 2+2?", "tenant": "default", "metadata": {}, "ts_ms": 1}


@pytest.mark.parametrize(
    "record",
    [
        OK,
        {**OK, "text": "x" * LIMIT},
        {**OK, "text": "é" * (LIMIT // 2)},
        {**OK, "text": "🙂" * (LIMIT // 4)},
    ],
)
def test_valid_queries_pass_unchanged(record):
    assert validate_query(record, LIMIT) is record


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**OK, "text": "x" * 40000}, "^query text is 40000 bytes, over the 32768-byte limit$"),
        # Counted in UTF-8 bytes, not characters: 16385 characters are 32770 bytes.
        ({**OK, "text": "é" * (LIMIT // 2 + 1)}, "^query text is 32770 bytes, over the 32768-byte limit$"),
        ({**OK, "text": "x" * (LIMIT + 1)}, "32769 bytes"),
        ({**OK, "text": ""}, "q-1 text is empty"),
        ({**OK, "text": " \n\t"}, "q-1 text is empty"),
        ({k: v for k, v in OK.items() if k != "text"}, "text must be a string, got NoneType"),
        ({**OK, "text": 5}, "text must be a string, got int"),
        ({**OK, "text": "a\ud800b"}, "not valid UTF-8"),
        ({**OK, "query_id": ""}, "query_id must be a non-empty string, got ''"),
        ({**OK, "query_id": "  "}, "query_id must be a non-empty string"),
        ({k: v for k, v in OK.items() if k != "query_id"}, "query_id must be a non-empty string, got None"),
    ],
)
def test_invalid_queries_are_rejected_with_a_reason(record, reason):
    with pytest.raises(ValidationError, match=reason):
        validate_query(record, LIMIT)


def test_the_limit_is_the_argument():
    assert validate_query({**OK, "text": "abcd"}, 4)
    with pytest.raises(ValidationError, match="5 bytes, over the 4-byte limit"):
        validate_query({**OK, "text": "abcde"}, 4)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "q1", "text": "hi"}', {"query_id": "q1", "text": "hi", "tenant": "default", "metadata": {}}),
        ('{"id": 7, "text": "hi", "tenant": "acme"}', {"query_id": "7", "text": "hi", "tenant": "acme",
                                                        "metadata": {}}),
        ('{"id": "q", "text": "hi", "tenant": null, "metadata": null}',
         {"query_id": "q", "text": "hi", "tenant": "default", "metadata": {}}),
        ('  {"id": "q", "text": "hi", "gold": "4", "extra": [1]}\n',
         {"query_id": "q", "text": "hi", "tenant": "default", "metadata": {}}),
        ('{"id": "q", "text": "hi", "metadata": {"s": "x", "i": 1, "f": 1.5, "b": true, "n": null, '
         '"l": [1, "a"], "o": {"z": 1, "a": 2}, "u": "é"}}',
         {"query_id": "q", "text": "hi", "tenant": "default",
          "metadata": {"s": "x", "i": "1", "f": "1.5", "b": "true", "n": "null", "l": '[1,"a"]',
                       "o": '{"a":2,"z":1}', "u": "é"}}),
    ],
)
def test_query_lines_become_query_records(line, expected):
    record = parse_query_line(line, now_ms=1234)
    assert record == {**expected, "ts_ms": 1234}
    # The parser's output is always something the codec accepts.
    assert CODEC.decode("query", CODEC.encode("query", record)) == {**record, "version": 1}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "query line is empty"),
        ("   \n", "query line is empty"),
        ('{"id": "q", "text": ', "not valid JSON"),
        ('["q", "hi"]', "must be a JSON object, got list"),
        ('"hi"', "must be a JSON object, got str"),
        ('{"text": "hi"}', "missing required field 'id'"),
        ('{"id": "q"}', "missing required field 'text'"),
        ('{"id": true, "text": "hi"}', "'id' must be a string or an integer, got true"),
        ('{"id": null, "text": "hi"}', "'id' must be a string or an integer, got null"),
        ('{"id": 1.5, "text": "hi"}', "'id' must be a string or an integer, got 1.5"),
        ('{"id": " ", "text": "hi"}', "'id' is empty"),
        ('{"id": "q", "text": 3}', "q 'text' must be a string, got int"),
        ('{"id": "q", "text": "  "}', "q text is empty"),
        ('{"id": "q", "text": "\\ud800"}', "not valid UTF-8"),
        ('{"id": "q", "text": "hi", "tenant": 3}', "'tenant' must be a non-empty string, got 3"),
        ('{"id": "q", "text": "hi", "tenant": ""}', "'tenant' must be a non-empty string"),
        ('{"id": "q", "text": "hi", "metadata": [1]}', "'metadata' must be a JSON object, got list"),
    ],
)
def test_bad_query_lines_are_rejected_with_a_reason(line, reason):
    with pytest.raises(ValidationError, match=reason):
        parse_query_line(line, now_ms=0)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    query_id=st.one_of(st.text(min_size=1), st.integers()),
    text=st.text(min_size=1),
    metadata=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    now_ms=st.integers(0, 2**62),
)
def test_any_parsed_line_encodes_and_keeps_its_text(query_id, text, metadata, now_ms):
    line = json.dumps({"id": query_id, "text": text, "metadata": metadata})
    try:
        record = parse_query_line(line, now_ms)
    except ValidationError:
        assert not str(query_id).strip() or not text.strip()
        return
    assert record["text"] == text and record["query_id"] == str(query_id) and record["ts_ms"] == now_ms
    assert set(record["metadata"]) == set(metadata)
    assert all(isinstance(v, str) for v in record["metadata"].values())
    assert CODEC.decode("query", CODEC.encode("query", record))["metadata"] == record["metadata"]
