"""Codec: single-object framing, round trips for every kind, decode failures, schema evolution."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfevolve.wire.codec import HEADER_LEN, MAGIC, Codec, default_schemas_dir, schema_fingerprint
from selfevolve.errors import ConfigError, DecodeError, ValidationError

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CODEC = Codec.from_dir()
KINDS = CODEC.kinds()
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

QUERY = {"query_id": "q-1", "text": "What is 2+2?", "tenant": "acme", "metadata": {"src": "cli"}, "ts_ms": 17}


def value_strategy(avro_type) -> st.SearchStrategy:
    """Values of an Avro type, drawn over the type's whole range (no NaN: it never equals itself)."""
    if isinstance(avro_type, list):
        return st.one_of(*(value_strategy(t) for t in avro_type))
    if isinstance(avro_type, dict):
        t = avro_type["type"]
        if t == "array":
            return st.lists(value_strategy(avro_type["items"]), max_size=4)
        if t == "map":
            return st.dictionaries(st.text(max_size=8), value_strategy(avro_type["values"]), max_size=4)
        if t == "record":
            return record_strategy(avro_type)
        return value_strategy(t)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=40),
        "bytes": st.binary(max_size=40),
    }[avro_type]


def record_strategy(schema: dict) -> st.SearchStrategy:
    """Records with every required field and any subset of the defaulted ones; `version` is the codec's."""
    fields = [f for f in schema["fields"] if f["name"] != "version"]
    return st.fixed_dictionaries(
        {f["name"]: value_strategy(f["type"]) for f in fields if "default" not in f},
        optional={f["name"]: value_strategy(f["type"]) for f in fields if "default" in f},
    )


def expected_after_round_trip(codec: Codec, kind: str, record: dict) -> dict:
    defaults = {f["name"]: f["default"] for f in codec.schema(kind)["fields"] if "default" in f}
    return {**defaults, **record, "version": codec.version(kind)}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_every_kind(kind):
    @PROPS
    @given(record_strategy(CODEC.schema(kind)))
    def prop(record):
        data = CODEC.encode(kind, record)
        assert data[:HEADER_LEN] == MAGIC + schema_fingerprint(CODEC.schema(kind))
        assert CODEC.decode(kind, data) == expected_after_round_trip(CODEC, kind, record)

    prop()


@pytest.mark.parametrize("kind", KINDS)
def test_other_kinds_bytes_are_rejected_as_wrong_schema(kind):
    @PROPS
    @given(st.data())
    def prop(data):
        other = data.draw(st.sampled_from([k for k in KINDS if k != kind]))
        payload = CODEC.encode(other, data.draw(record_strategy(CODEC.schema(other))))
        with pytest.raises(DecodeError, match=f"^wrong schema: payload is a {other} record"):
            CODEC.decode(kind, payload)

    prop()


@PROPS
@given(st.binary(max_size=64))
def test_garbage_after_a_valid_header_only_ever_raises_decode_error(body):
    header = CODEC.encode("query", QUERY)[:HEADER_LEN]
    try:
        record = CODEC.decode("query", header + body)
    except DecodeError as e:
        assert str(e).startswith(("truncated body", "corrupt body", "trailing garbage"))
    else:
        assert set(record) == {f["name"] for f in CODEC.schema("query")["fields"]}


@pytest.mark.parametrize("kind", KINDS)
def test_every_proper_prefix_is_truncated(kind):
    @settings(PROPS, max_examples=10)
    @given(record_strategy(CODEC.schema(kind)))
    def prop(record):
        data = CODEC.encode(kind, record)
        for n in range(1, len(data)):
            with pytest.raises(DecodeError, match="^truncated (header|body)"):
                CODEC.decode(kind, data[:n])

    prop()


def _unknown_fingerprint() -> bytes:
    return MAGIC + b"\x00" * 8 + CODEC.encode("query", QUERY)[HEADER_LEN:]


def _bad_utf8() -> bytes:
    # query_id is a 2-byte string 0xff 0xfe: the length is right, the bytes are not UTF-8.
    return CODEC.encode("query", QUERY)[:HEADER_LEN] + b"\x02" + b"\x04\xff\xfe" + b"\x00" * 8


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "^empty payload"),
        (None, "^empty payload"),
        (b'{"id": 1, "text": "hi"}', "^not Avro single-object encoding: payload starts with 0x7b22"),
        (b"\x00\x01" + b"\x00" * 20, "^not Avro single-object encoding"),
        (MAGIC + b"\x01\x02", "^truncated header: payload is 4 bytes"),
        (_unknown_fingerprint(), "^unknown writer schema fingerprint 0x0000000000000000"),
        (CODEC.encode("answer", {"query_id": "q", "tenant": "t", "model": "m", "answer": "a", "composite": 1.0,
                                 "cost_usd": 0.0, "strategy": "s", "latency_ms": 1.0, "ts_ms": 1}),
         "^wrong schema: payload is a answer record \\(v1\\), expected query"),
        (CODEC.encode("query", QUERY)[:-1], "^truncated body"),
        (CODEC.encode("query", QUERY) + b"\x00\x00", "^trailing garbage: 2 bytes after the query v1 record"),
        (_bad_utf8(), "^corrupt body: .*UnicodeDecodeError"),
        (bytearray(CODEC.encode("query", QUERY)), None),
        (memoryview(CODEC.encode("query", QUERY)), None),
    ],
)
def test_decode_failures_have_distinct_reasons(payload, reason):
    if reason is None:
        assert CODEC.decode("query", payload)["query_id"] == "q-1"
    else:
        with pytest.raises(DecodeError, match=reason):
            CODEC.decode("query", payload)


def test_a_union_branch_out_of_range_is_corrupt_not_truncated():
    data = bytearray(CODEC.encode("spawn", {"domain": 1, "teacher": "t", "mode": "live", "priority": 1.0,
                                            "ts_ms": 5}))
    assert data[HEADER_LEN + 2] == 2  # after version and domain: the union branch of `teacher` (1 = string)
    data[HEADER_LEN + 2] = 8
    with pytest.raises(DecodeError, match="^corrupt body: the spawn v1 record does not parse \\(IndexError"):
        CODEC.decode("spawn", bytes(data))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({k: v for k, v in QUERY.items() if k != "text"}, "missing required field\\(s\\) 'text'"),
        ({"text": "hi"}, "missing required field\\(s\\) 'query_id', 'ts_ms'"),
        ({**QUERY, "tenat": "x"}, "unknown field\\(s\\) 'tenat'"),
        ({**QUERY, "ts_ms": 1.5}, "ts_ms is <1.5>.*expected long"),
        ({**QUERY, "ts_ms": True}, "ts_ms is <True>.*expected long"),
        ({**QUERY, "ts_ms": 2**63}, "ts_ms .* expected long"),
        ({**QUERY, "text": None}, "Query.text\\) is None expected string"),
        ({**QUERY, "metadata": {"n": 1}}, "expected string"),
        ({**QUERY, "text": "\ud800"}, "not valid UTF-8"),
    ],
)
def test_encode_rejects_records_that_do_not_fit(record, reason):
    with pytest.raises(ValidationError, match=reason):
        CODEC.encode("query", record)


def test_encode_fills_defaults_and_stamps_the_writer_version():
    data = CODEC.encode("query", {"query_id": "q", "text": "t", "ts_ms": 5, "version": 99})
    assert CODEC.decode("query", data) == {"version": 1, "query_id": "q", "text": "t", "tenant": "default",
                                           "metadata": {}, "ts_ms": 5}


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown event kind 'querry'"):
        CODEC.encode("querry", QUERY)
    with pytest.raises(ConfigError, match="unknown event kind"):
        CODEC.decode("querry", CODEC.encode("query", QUERY))


def test_fingerprint_matches_the_avro_spec_vector():
    # From the Avro spec's schema-tests: "int" has CRC-64-AVRO fingerprint 8247732601305521295.
    assert schema_fingerprint("int") == (8247732601305521295).to_bytes(8, "little")


def test_default_dir_is_the_repo_schemas_and_schema_returns_a_copy():
    assert default_schemas_dir() == REPO_SCHEMAS
    assert KINDS == sorted(p.stem for p in REPO_SCHEMAS.glob("*.avsc"))
    s = CODEC.schema("query")
    s["fields"].clear()
    assert CODEC.schema("query")["fields"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_current_schema_is_kept_in_versions(kind):
    # Editing a schema without bumping its version (and keeping the old file) would strand old records.
    path = REPO_SCHEMAS / "versions" / f"{kind}.v{CODEC.version(kind)}.avsc"
    assert path.is_file(), f"missing {path}"
    assert schema_fingerprint(json.loads(path.read_text())) == schema_fingerprint(CODEC.schema(kind))


# --- schema evolution: v2 adds an optional field ---------------------------------------------------------

V1 = json.loads((REPO_SCHEMAS / "query.avsc").read_text())


def _v2(language_default: object = "en") -> dict:
    s = copy.deepcopy(V1)
    s["fields"][0]["default"] = 2
    field = {"name": "language", "type": "string"}
    if language_default is not None:
        field["default"] = language_default
    s["fields"].append(field)
    return s


def _v1_stamped(version: int) -> dict:
    s = copy.deepcopy(V1)
    s["fields"][0]["default"] = version
    return s


def _schemas_dir(root: Path, current: dict, history: list[dict]) -> Path:
    (root / "versions").mkdir(parents=True)
    (root / "query.avsc").write_text(json.dumps(current))
    for s in history:
        (root / "versions" / f"query.v{s['fields'][0]['default']}.avsc").write_text(json.dumps(s))
    return root


@pytest.fixture
def old_and_new(tmp_path):
    # Readers are upgraded first: the old deployment already knows the v2 writer schema by fingerprint.
    old = Codec.from_dir(_schemas_dir(tmp_path / "old", V1, [V1, _v2()]))
    new = Codec.from_dir(_schemas_dir(tmp_path / "new", _v2(), [V1]))
    return old, new


def test_old_reader_reads_a_new_writer(old_and_new):
    old, new = old_and_new
    got = old.decode("query", new.encode("query", {**QUERY, "language": "fr"}))
    assert got == {**QUERY, "version": 2}


def test_new_reader_reads_an_old_writer_and_fills_the_default(old_and_new):
    old, new = old_and_new
    assert new.decode("query", old.encode("query", QUERY)) == {**QUERY, "version": 1, "language": "en"}
    assert new.decode("query", new.encode("query", QUERY)) == {**QUERY, "version": 2, "language": "en"}


def test_the_repo_codec_reads_old_writers_but_not_unannounced_new_ones(old_and_new):
    old, new = old_and_new
    assert CODEC.decode("query", old.encode("query", QUERY)) == {**QUERY, "version": 1}
    with pytest.raises(DecodeError, match="^unknown writer schema fingerprint"):
        CODEC.decode("query", new.encode("query", QUERY))


def test_a_new_required_field_cannot_read_old_records(tmp_path):
    old = Codec.from_dir(_schemas_dir(tmp_path / "old", V1, []))
    strict = Codec.from_dir(_schemas_dir(tmp_path / "new", _v2(language_default=None), [V1]))
    with pytest.raises(DecodeError, match="^incompatible schemas: a query v1 writer cannot be read as query v2"):
        strict.decode("query", old.encode("query", QUERY))


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"versions/query.1.avsc": V1}, "is not named <kind>.v<N>.avsc"),
        ({"query.avsc": ["string"]}, "does not hold a JSON object"),
        ({"query.avsc": {**V1, "type": "enum"}}, "is not an Avro record"),
        ({"versions/query.v3.avsc": V1}, "is named v3 but its version field defaults to 1"),
        ({"versions/query.v2.avsc": _v1_stamped(2), "query.avsc": _v2()}, "two different 'query' schemas claim v2"),
        ({"versions/answr.v1.avsc": V1}, "no current schema answr.avsc"),
        ({"query.avsc": {**V1, "fields": V1["fields"][1:]}}, "no int `version` field"),
        ({"query.avsc": {**V1, "fields": [*V1["fields"], {"name": "x", "type": "nope"}]}}, "not valid Avro"),
    ],
)
def test_inconsistent_schema_dirs_are_config_errors(tmp_path, files, message):
    root = _schemas_dir(tmp_path, V1, [])
    for name, schema in files.items():
        (root / name).write_text(json.dumps(schema))
    with pytest.raises(ConfigError, match=message):
        Codec.from_dir(root)


def test_missing_or_empty_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Codec.from_dir(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no \\*.avsc files"):
        Codec.from_dir(tmp_path)


def test_kind_of_names_the_writer_kind_or_none():
    codec = Codec.from_dir()
    fb = codec.encode("feedback", {"query_id": "q", "model": "m", "quality": 1.0, "ts_ms": 1})
    assert codec.kind_of(fb) == "feedback"
    assert codec.kind_of(b"\x00garbage") is None
    assert codec.kind_of(fb[:5]) is None
    assert codec.kind_of(b"\xc3\x01" + b"\xff" * 8) is None
