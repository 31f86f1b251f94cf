"""Dead-letter records: one row per cause, through the real decode/validate path and back through the codec."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfevolve.wire.codec import HEADER_LEN, MAGIC, Codec
from selfevolve.config import KAFKA_MESSAGE_MAX_BYTES, Settings
from selfevolve.wire.deadletter import MAX_REASON_CHARS, PAYLOAD_PREFIX_BYTES, dead_letter, reason_for
from selfevolve.errors import DecodeError, SelfEvolveError, ValidationError
from selfevolve.wire.validation import parse_query_line, validate_query

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
    assert back == {**record, "version": 2}
    assert back["error_type"] == error_type
    assert fragment in back["reason"]
    assert (back["source_topic"], back["partition"], back["offset"], back["ts_ms"]) == (
        "selfevolve.queries", 3, 1_000_000_000_000, 99)
    assert back["payload"] == payload[:PAYLOAD_PREFIX_BYTES]
    assert back["payload_len"] == len(payload)
    assert back["payload_sha256"] == hashlib.sha256(payload).hexdigest()


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
    assert record["payload"] == b"" and record["payload_len"] == 0
    assert record["payload_sha256"] == hashlib.sha256(b"").hexdigest()
    assert dead_letter("t", 0, 0, bytearray(b"ab"), DecodeError("x"), 0)["payload"] == b"ab"


@settings(max_examples=60, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=30),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(-1, 2**63 - 1),
    payload=st.binary(max_size=200),
    max_payload=st.integers(0, 300),
    message=st.text(max_size=300),
    error_class=st.sampled_from([DecodeError, ValidationError, ValueError, KeyError, RuntimeError]),
    now_ms=st.integers(0, 2**62),
)
def test_any_failure_yields_an_encodable_dead_letter(topic, partition, offset, payload, max_payload, message,
                                                     error_class, now_ms):
    record = dead_letter(topic, partition, offset, payload, error_class(message), now_ms, max_payload=max_payload)
    back = CODEC.decode("dead_letter", CODEC.encode("dead_letter", record))
    assert back["payload"] == payload[:max_payload] and back["error_type"] == error_class.__name__
    assert back["payload_len"] == len(payload)
    assert back["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert back["reason"] and len(back["reason"]) <= MAX_REASON_CHARS


# A dead letter's own size: name and reason are capped, so prefix + this much always fits.
OVERHEAD = 16 * 1024


@pytest.mark.parametrize("size", [0, 1, PAYLOAD_PREFIX_BYTES, PAYLOAD_PREFIX_BYTES + 1, 1 << 20, 10 << 20])
def test_a_dead_letter_keeps_a_bounded_prefix_and_identifies_the_whole(size):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    error = ValidationError(f"record is {size} bytes " + "é" * 5000)  # the worst reason: capped, multibyte
    encoded = CODEC.encode("dead_letter", dead_letter("selfevolve.queries", 0, 7, payload, error, now_ms=1))
    assert len(encoded) <= PAYLOAD_PREFIX_BYTES + OVERHEAD < KAFKA_MESSAGE_MAX_BYTES
    back = CODEC.decode("dead_letter", encoded)
    assert back["payload"] == payload[:PAYLOAD_PREFIX_BYTES]
    assert (back["payload_len"], back["payload_sha256"]) == (size, hashlib.sha256(payload).hexdigest())


def test_a_v1_dead_letter_still_reads_with_unknown_length_and_digest():
    v1 = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "versions" / "dead_letter.v1.avsc").read_text())
    old = Codec({"dead_letter": v1})
    record = {"source_topic": "t", "partition": 0, "offset": 1, "reason": "r", "error_type": "E",
              "payload": b"abc", "ts_ms": 2}
    back = CODEC.decode("dead_letter", old.encode("dead_letter", record))
    assert back == {**record, "version": 1, "payload_len": -1, "payload_sha256": ""}


def test_producers_and_the_broker_agree_on_the_size_limit(tmp_path):
    from infra.kafka.launcher import broker_properties

    props = broker_properties(tmp_path, 9092, 9093)
    assert int(props["message.max.bytes"]) == KAFKA_MESSAGE_MAX_BYTES == Settings().kafka_max_message_bytes
    # A query record the edge accepts yields a decision (the text twice, plus metadata) under the limit.
    assert 3 * Settings().max_record_bytes < KAFKA_MESSAGE_MAX_BYTES


MIGRATE = r"""
import sys
from pathlib import Path
from selfevolve.config import Settings
from streams.store import HistoryStore
old, new = Path(sys.argv[1]), Path(sys.argv[2])
settings = Settings(home=Path(sys.argv[3]))
with HistoryStore.open(settings) as store:
    store.ensure_schema(old)
    store.insert("dead_letter", [{"source_topic": "t", "partition": 0, "offset": 1, "reason": "r",
                                  "error_type": "E", "payload": b"abc", "ts_ms": 2}])
with HistoryStore.open(settings) as store:
    store.ensure_schema(new)
    store.ensure_schema(new)  # idempotent
    store.insert("dead_letter", [{"source_topic": "t", "partition": 0, "offset": 2, "reason": "r",
                                  "error_type": "E", "payload": b"ab", "payload_len": 9,
                                  "payload_sha256": "ff", "ts_ms": 3}])
    print(store.query("SELECT `offset`, payload_len, payload_sha256 FROM dead_letters FINAL ORDER BY `offset`")[1])
"""


def test_a_store_made_before_v2_gains_the_new_columns(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("chdb")
    root = Path(__file__).resolve().parents[2]
    ddl = (root / "infra" / "clickhouse" / "ddl.sql").read_text()
    old = "\n".join(line for line in ddl.splitlines() if "payload_len" not in line and "payload_sha256" not in line)
    assert old != ddl
    (tmp_path / "old.sql").write_text(old)
    # Its own process: chdb allows one engine directory per process.
    out = subprocess.run([sys.executable, "-c", MIGRATE, str(tmp_path / "old.sql"),
                          str(root / "infra" / "clickhouse" / "ddl.sql"), str(tmp_path / "home")],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[(1, -1, ''), (2, 9, 'ff')]"
