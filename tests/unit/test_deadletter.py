"""Dead-letter records: one row per cause, through the real decode/validate path and back through the codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.codec import HEADER_LEN, MAGIC, Codec
from selfevolve.deadletter import MAX_REASON_CHARS, dead_letter, reason_for
from selfevolve.errors import DecodeError, SelfEvolveError, ValidationError
from selfevolve.validation import parse_query_line, validate_query

CODEC = Codec.from_dir()
LIMIT = 32 * 1024
QUERY = {"query_id": "q-1", "text": "hi", "ts_ms": 1}
ANSWER = {"query_id": "q", "tenant": "t", "model": "m", "answer": "a", "composite": 1.0, "cost_usd": 0.0,
          "strategy": "targeted", "latency_ms": 1.0, "ts_ms": 1}


def ingest_bytes(payload: bytes) -> dict:
    """What the router does with a message from the queries topic."""
    return validate_query(CODEC.decode("query", payload), LIMIT)


def ingest_line(line: str) -> bytes:
    """What the query producer does with one of a user's JSON lines."""
    return CODEC.encode("query", validate_query(parse_query_line(line, now_ms=1), LIMIT))


CASES = [
    # (name, stage, input, error_type, reason fragment)
    ("bad bytes", ingest_bytes, b"\x00\x01garbage", "DecodeError", "not Avro single-object encoding"),
    ("json on an avro topic", ingest_bytes, b'{"id": "q"}', "DecodeError", "not Avro single-object encoding"),
    ("empty message", ingest_bytes, b"", "DecodeError", "empty payload"),
    ("truncated", ingest_bytes, CODEC.encode("query", QUERY)[:-1], "DecodeError", "truncated body"),
    ("unknown writer", ingest_bytes, MAGIC + b"\xff" * 8 + b"\x02", "DecodeError",
     "unknown writer schema fingerprint 0xffffffffffffffff"),
    ("wrong schema", ingest_bytes, CODEC.encode("answer", ANSWER), "DecodeError",
     "wrong schema: payload is a answer record"),
    ("bad utf-8", ingest_bytes, CODEC.encode("query", QUERY)[:HEADER_LEN] + b"\x02\x04\xff\xfe\x00\x00\x00\x00",
     "DecodeError", "does not parse (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff"),
    ("missing required field (line)", ingest_line, '{"id": "q-9"}', "ValidationError",
     "missing required field 'text'"),
    ("missing required field (record)", lambda r: CODEC.encode("query", r), {"text": "hi", "ts_ms": 1},
     "ValidationError", "missing required field(s) 'query_id'"),
    ("empty query id", ingest_bytes, CODEC.encode("query", {**QUERY, "query_id": ""}), "ValidationError",
     "query_id must be a non-empty string"),
    ("empty text", ingest_bytes, CODEC.encode("query", {**QUERY, "text": "   "}), "ValidationError",
     "q-1 text is empty"),
    ("oversized text", ingest_bytes, CODEC.encode("query", {**QUERY, "text": "x" * 40000}), "ValidationError",
     "query text is 40000 bytes, over the 32768-byte limit"),
    ("oversized line", ingest_line, '{"id": "q", "text": "' + "é" * 20000 + '"}', "ValidationError",
     "query text is 40000 bytes, over the 32768-byte limit"),
]


@pytest.mark.parametrize(("stage", "given_input", "error_type", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_cause_becomes_an_encodable_dead_letter(stage, given_input, error_type, fragment):
    with pytest.raises(SelfEvolveError) as info:
        stage(given_input)
    payload = given_input.encode() if isinstance(given_input, str) else given_input
    if isinstance(payload, dict):
        payload = repr(payload).encode()
    record = dead_letter("selfevolve.queries", 3, 1_000_000_000_000, payload, info.value, now_ms=99)
    back = CODEC.decode("dead_letter", CODEC.encode("dead_letter", record))
    assert back == {**record, "version": 1}
    assert back["error_type"] == error_type
    assert fragment in back["reason"]
    assert (back["source_topic"], back["partition"], back["offset"], back["ts_ms"]) == (
        "selfevolve.queries", 3, 1_000_000_000_000, 99)
    assert back["payload"] == payload


def _raise_chain(outer: BaseException, inner: BaseException, *, explicit: bool = True) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            if explicit:
                raise outer from e
            raise outer  # noqa: B904 - the implicit context is what is under test
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DecodeError("bad"), "bad"),
        (DecodeError(""), "DecodeError"),
        (_raise_chain(DecodeError("corrupt body"), ValueError("varint too long")),
         "corrupt body (caused by ValueError: varint too long)"),
        # A cause already quoted in the message is not repeated.
        (_raise_chain(DecodeError("corrupt body (boom)"), ValueError("boom")), "corrupt body (boom)"),
        (_raise_chain(ValidationError("outer"), KeyError("k"), explicit=False), "outer (caused by KeyError: 'k')"),
    ],
)
def test_reason_is_the_message_plus_useful_causes(error, reason):
    assert reason_for(error) == reason


def test_a_suppressed_context_is_not_reported():
    try:
        try:
            raise KeyError("hidden")
        except KeyError:
            raise ValidationError("shown") from None
    except ValidationError as e:
        assert reason_for(e) == "shown"


def test_a_cause_cycle_terminates_and_deep_chains_are_cut():
    a, b = DecodeError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert reason_for(a) == "a (caused by ValueError: b)"
    errors = [ValueError(f"e{i}") for i in range(20)]
    for outer, inner in zip(errors, errors[1:]):
        outer.__cause__ = inner
    assert reason_for(errors[0]).count("caused by") == 5


def test_long_reasons_are_capped_and_tombstones_keep_an_empty_payload():
    record = dead_letter("t", 0, 0, None, DecodeError("x" * 10_000), now_ms=0)
    assert len(record["reason"]) == MAX_REASON_CHARS and record["reason"].endswith("…")
    assert record["payload"] == b""
    assert dead_letter("t", 0, 0, bytearray(b"ab"), DecodeError("x"), 0)["payload"] == b"ab"


@settings(max_examples=60, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=30),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(-1, 2**63 - 1),
    payload=st.binary(max_size=200),
    message=st.text(max_size=300),
    error_class=st.sampled_from([DecodeError, ValidationError, ValueError, KeyError, RuntimeError]),
    now_ms=st.integers(0, 2**62),
)
def test_any_failure_yields_an_encodable_dead_letter(topic, partition, offset, payload, message, error_class,
                                                     now_ms):
    record = dead_letter(topic, partition, offset, payload, error_class(message), now_ms)
    back = CODEC.decode("dead_letter", CODEC.encode("dead_letter", record))
    assert back["payload"] == payload and back["error_type"] == error_class.__name__
    assert back["reason"] and len(back["reason"]) <= MAX_REASON_CHARS
