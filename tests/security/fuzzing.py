"""The fuzz generator of tests/security/test_fuzz.py, pure and seeded: plausible records of each input topic's
kind and their mutations (bit flips, truncations, foreign fingerprints, hostile values, huge records...)."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import numpy as np

from selfevolve.wire.codec import HEADER_LEN, Codec
from selfevolve.wire.tenancy import query_key
from selfevolve.wire.topics import Topics

TENANTS = ("fa", "fb")
MODELS = ("gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-instant-v1", "mistralai/mistral-7b-chat")
# (mutation, weight): what each fuzz record is made of, starting from a plausible record of the topic's kind.
MUTATIONS = (("bitflip", 20), ("truncate", 14), ("fingerprint", 8), ("other_kind", 8), ("random", 10),
             ("empty", 3), ("tombstone", 3), ("trailing", 8), ("hostile", 20), ("duplicate", 6))
HUGE_PER_TOPIC = 2  # records near the broker's size limit: one of random bytes, one valid Avro
NAN, INF = float("nan"), float("inf")
BIG = "x" * 100_000  # a hostile string of 100 KB, picked for one hostile value in 30 (they add up on the broker)
BAD_STRINGS = ("", " ", "\x00", "nul\x00inside", "../../../etc/passwd", "'; DROP TABLE queries; --",
               "{not json", "null", "[]", '{"models": 5}', "no-such-model", "\u202e\u2028\ufeff", "other-tenant",
               "UPPER/Case")
BAD_DOUBLES = (NAN, INF, -INF, -1e308, 1e308, -1.0, 2.0)
BAD_INTS = (-1, -(2**31), 2**31 - 1)
BAD_LONGS = (-1, -(2**63), 2**63 - 1)


def targets(topics: Topics) -> dict[str, str]:
    """Every topic a worker of the pipeline reads, with the kind it expects (one tenant's query and feedback
    topics stand for all of them: the serve role reads them by pattern; every serve worker folds history)."""
    read = (topics.queries, topics.route_decisions, topics.inference_responses, topics.requests_for("replay"),
            topics.feedback, topics.model_events, topics.strategy, topics.scores, topics.answers,
            topics.queries_for(TENANTS[0]), topics.feedback_for(TENANTS[0]), topics.history)
    return {topic: topics.kind_of(topic) for topic in read}


def _plausible(name: str, typ, rng: random.Random, i: int, tenant: str):
    """A value a real writer could have put in field `name` of Avro type `typ`."""
    named = {"query_id": f"fz-{i}", "request_id": f"fz-{i}:0:{MODELS[0]}", "tenant": tenant,
             "model": rng.choice(MODELS), "text": f"Fuzz question {i}: what is {i} plus one?",
             "strategy": "targeted", "kind": rng.choice(("promote", "demote", "activate", "version")),
             "new_role": rng.choice(("student", "ta", "teacher")), "old_role": None, "checkpoint": None,
             "theta_high": 0.8, "theta_low": 0.5, "source": "", "error": None, "fallback_from": None,
             "answer": "4", "ok": True, "stage": 0, "attempt": 0, "quality": 1.0, "mode": "replay"}
    if name in named:
        return named[name]
    if isinstance(typ, list):
        return None if "null" in typ else _plausible(name, typ[0], rng, i, tenant)
    if isinstance(typ, dict):
        return [rng.choice(MODELS)] if typ.get("type") == "array" else {}
    return {"string": "fuzz", "double": round(rng.random(), 3), "int": rng.randrange(4),
            "long": int(time.time() * 1000), "boolean": rng.random() < 0.5, "bytes": b"fuzz"}[typ]


def _plan(record: dict) -> str:
    from selfevolve.routing import Decision

    values = dict(query_id=record["query_id"], tenant=record.get("tenant", "fuzz"), text="Fuzz question?",
                  strategy="targeted", similarity=0.0, models=tuple(record["models"]), escalation=(),
                  escalate_below=0.0, expected_cost=0.0, max_cost=0.0, budget=None, estimates={}, costs={},
                  fallbacks={}, reason="fuzz", theta_high=0.8, theta_low=0.5, cost_lambda=0.1)
    return json.dumps({f.name: values.get(f.name) for f in dataclasses.fields(Decision)})


def _history(record: dict, rng: random.Random, dim: int) -> dict:
    """A delivery as the scorer writes it (a unit vector of the history's width, the winner and its cost: one
    every fold accepts, so mutations reach the folds) or a verdict as the feedback host writes it (both:
    selfevolve/wire/records.py)."""
    if rng.random() < 0.5:
        return {**record, "event": "feedback", "text": "", "vector": None, "winner": None, "costs": {},
                "answer": "", "cached_from": "", "quality": rng.choice((0.0, 0.5, 1.0))}
    vector = np.array([rng.gauss(0.0, 1.0) for _ in range(dim)], dtype="<f4")
    return {**record, "event": "delivery", "vector": (vector / np.linalg.norm(vector)).astype("<f4").tobytes(),
            "winner": record["model"], "costs": {record["model"]: 0.002}, "cached_from": "", "model": "",
            "quality": 0.0}


def base_record(codec: Codec, kind: str, rng: random.Random, i: int, tenant: str, dim: int) -> dict:
    """A plausible record of `kind`; dim: the width of a history delivery's vector (the serve workers')."""
    fields = [f for f in codec.schema(kind)["fields"] if f["name"] != "version"]
    record = {f["name"]: _plausible(f["name"], f["type"], rng, i, tenant) for f in fields}
    if kind == "route_decision":
        record["plan"] = _plan(record)
    if kind == "history":
        record = _history(record, rng, dim)
    return record


def _bad_string(rng: random.Random) -> str:
    return BIG if rng.random() < 1 / 30 else rng.choice(BAD_STRINGS)


def _hostile_value(field: dict, value, rng: random.Random):
    typ = field["type"]
    if isinstance(typ, list):  # a nullable field: null, or a hostile value of its other branch
        branch = next(t for t in typ if t != "null")
        return None if rng.random() < 0.5 else _hostile_value({"type": branch}, value, rng)
    if isinstance(typ, dict):
        if typ.get("type") == "array":
            return rng.choice(([], ["no-such-model"], ["", "\x00"], [MODELS[0]] * 50))
        if typ.get("values") == "double":  # a history delivery's costs: unknown or empty models, odd prices
            return rng.choice(({"": NAN}, {MODELS[0]: INF}, {"no-such-model": -1.0}, {"k\x00": 1e308},
                               {f"k{j}": 1.0 for j in range(1000)}))
        return rng.choice(({"": ""}, {"k\x00": _bad_string(rng)}, {f"k{j}": "v" for j in range(1000)}))
    return {"string": lambda: _bad_string(rng), "double": lambda: rng.choice(BAD_DOUBLES),
            "int": lambda: rng.choice(BAD_INTS), "long": lambda: rng.choice(BAD_LONGS),
            "boolean": lambda: not value, "bytes": lambda: _bad_vector(value, rng)}[typ]()


def _bad_vector(value, rng: random.Random) -> bytes:
    """A vector of the wrong length or of NaNs; in place of one the record held, also one of its width that
    is all zeros (no direction) or of float32's largest values (its dot products overflow)."""
    bad = (b"\x00" * 1001, b"\xff\xff\xff\x7f" * 256)
    if isinstance(value, bytes) and value:
        bad += (b"\x00" * len(value), np.full(len(value) // 4, 3.4e38, dtype="<f4").tobytes())
    return rng.choice(bad)


def hostile(codec: Codec, kind: str, record: dict, rng: random.Random) -> bytes:
    """Valid Avro of `kind` whose values are hostile: empty ids, NUL bytes, 100 KB strings, NaN, negative
    timestamps, unknown models, plans that are not JSON, another tenant."""
    fields = [f for f in codec.schema(kind)["fields"] if f["name"] != "version"]
    out = dict(record)
    for f in rng.sample(fields, k=min(len(fields), rng.randint(1, 3))):
        out[f["name"]] = _hostile_value(f, out[f["name"]], rng)
    return codec.encode(kind, out)


def mutate(codec: Codec, kind: str, good: bytes, record: dict, rng: random.Random, how: str,
           sent: list[bytes | None], dim: int) -> bytes | None:
    if how == "bitflip":
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if how == "truncate":
        return good[: rng.randrange(len(good))]
    if how == "fingerprint":
        return good[:2] + rng.randbytes(8) + good[HEADER_LEN:]
    if how == "other_kind":
        other = rng.choice([k for k in codec.kinds() if k != kind])
        return codec.encode(other, base_record(codec, other, rng, rng.randrange(10**6), "fuzz", dim))
    if how == "random":
        return rng.randbytes(rng.randrange(0, 200))
    if how == "empty":
        return b""
    if how == "tombstone":
        return None
    if how == "trailing":
        return good + rng.randbytes(rng.randint(1, 64))
    if how == "hostile":
        return hostile(codec, kind, record, rng)
    return rng.choice(sent) if sent else good  # duplicate: a record already sent, verbatim


def huge(codec: Codec, kind: str, record: dict, size: int, valid: bool, rng: random.Random) -> bytes:
    """A value of about `size` bytes: random bytes behind a valid header, or valid Avro with one huge string."""
    if not valid:
        return codec.encode(kind, record)[:HEADER_LEN] + rng.randbytes(size - HEADER_LEN)
    if kind == "route_decision":  # a workable decision whose text is 2-byte characters: 3x as JSON (\u00e9)
        plan = {**json.loads(record["plan"]), "text": "\u00e9" * ((size - 8192) // 2)}
        return codec.encode(kind, {**record, "plan": json.dumps(plan, ensure_ascii=False)})
    # Not the ids; in a history delivery the answer, which the answer cache of every serve worker keeps.
    strings = [f["name"] for f in codec.schema(kind)["fields"] if f["type"] == "string"]
    field = "answer" if kind == "history" else next(f for f in strings if f not in ("query_id", "tenant"))
    return codec.encode(kind, {**record, field: "h" * (size - 4096)})


def fuzz_records(codec: Codec, topic: str, kind: str, tenant: str, n: int, size_limit: int,
                 rng: random.Random, dim: int) -> list[tuple[bytes | None, bytes | None, str]]:
    """n (key, value, mutation) fuzz records for one topic; ids start with `fz-`, which valid traffic never uses;
    dim: the serve workers' vector width (a history delivery of another width is one no fold accepts)."""
    names, weights = zip(*MUTATIONS)
    out: list[tuple[bytes | None, bytes | None, str]] = []
    sent: list[bytes | None] = []
    for i in range(n):
        record = base_record(codec, kind, rng, rng.randrange(10**6), tenant, dim)
        while i < HUGE_PER_TOPIC and record.get("event") == "feedback":  # a huge answer needs a delivery
            record = base_record(codec, kind, rng, rng.randrange(10**6), tenant, dim)
        good = codec.encode(kind, record)
        if i < HUGE_PER_TOPIC:
            how, value = "huge", huge(codec, kind, record, size_limit - 16 * 1024, valid=i % 2 == 1, rng=rng)
        else:
            how = rng.choices(names, weights)[0]
            value = mutate(codec, kind, good, record, rng, how, sent, dim)
        # Mostly the key a real writer uses ((tenant, id): one query's events share a partition), else junk.
        proper = query_key(record.get("tenant", tenant), record.get("query_id", "fz")).encode()
        key = rng.choice((proper, proper, proper, None, rng.randbytes(16), b"k" * 1000))
        key = b"tombstone" if key is None and value is None else key  # Kafka needs one of the two
        sent.append(value)
        out.append((key, value, how))
    return out
