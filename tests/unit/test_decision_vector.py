"""A decision carries its query's embedding exactly (float32 little-endian); older decisions carry none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selfevolve.errors import ValidationError
from selfevolve.routing import Decision
from selfevolve.wire.codec import Codec
from selfevolve.wire.records import decision_record, vector_bytes, vector_of

CODEC = Codec.from_dir()
V3 = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "versions" / "route_decision.v3.avsc").read_text())
D = Decision("q", "t", "text", "parallel", 0.0, ("a",), (), 0.0, 0.001, 0.001, None, {"a": 0.5}, {"a": 0.001},
             {}, "why", 0.8, 0.5, 0.1)


def test_the_vector_survives_the_wire_bit_for_bit():
    vec = np.random.default_rng(3).standard_normal(384).astype(np.float32)
    vec[0] = np.float32(1e-38)  # a subnormal-adjacent value a float16 or text form would lose
    record = CODEC.decode("route_decision", CODEC.encode("route_decision", decision_record(D, {}, 1.0, 7, vector=vec)))
    got = vector_of(record)
    assert got.dtype == np.float32 and got.tobytes() == vec.tobytes()
    assert record["vector"] == vec.astype("<f4").tobytes() and len(record["vector"]) == 384 * 4


@pytest.mark.parametrize("record", [
    decision_record(D, {}, 1.0, 7),  # a decision without one
    {**decision_record(D, {}, 1.0, 7), "vector": b""},
])
def test_a_decision_without_a_vector_has_none(record):
    assert vector_of(CODEC.decode("route_decision", CODEC.encode("route_decision", record))) is None


def test_a_v3_decision_reads_as_one_without_a_vector():
    old = Codec({"route_decision": V3})
    record = {k: v for k, v in decision_record(D, {}, 1.0, 7).items() if k != "vector"}
    got = CODEC.decode("route_decision", old.encode("route_decision", record))
    assert got["version"] == 3 and got["vector"] is None and vector_of(got) is None


@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00\x80", "not a whole number of float32s"),
    (vector_bytes([1.0, float("nan")]), "NaN or an infinity"),
    (vector_bytes([float("inf")]), "NaN or an infinity"),
])
def test_a_vector_that_is_not_finite_float32s_is_refused(raw, match):
    with pytest.raises(ValidationError, match=match):
        vector_of({"vector": raw})
