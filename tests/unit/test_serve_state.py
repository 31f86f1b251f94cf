"""A serve worker's replica of the history topic (streams/runtime.py ServeState): apply() folds a record into
the history and the router's domains or into neither; the snapshot keeps both with the topic offset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selfevolve.config import Settings
from selfevolve.errors import StoreError
from selfevolve.flow.events import Event
from selfevolve.scoring import arbiter
from selfevolve.wire.codec import Codec
from selfevolve.wire.records import history_delivery, history_feedback, vector_bytes
from streams.runtime import OFFSET_SNAPSHOT, Runtime, ServeState

TEXTS = ["what is the capital of france", "write a python loop", "integrate x squared", "name a mammal",
         "sum of two and two"]
CODEC = Codec.from_dir()


def _verdict(qid: str) -> arbiter.Verdict:
    return arbiter.Verdict(qid, "a", "A", 0.9, {}, ("a", "b"), (), 0.003, "hybrid", 1, {"a": 0.001, "b": 0.002})


def delivery(serve: ServeState, i: int, tenant: str = "t") -> dict:
    vec = serve.embedder.encode([TEXTS[i]])[0]
    return history_delivery(_verdict(f"q{i}"), tenant, TEXTS[i], vec, -1, 100 + i, f"p.queries:0:{i}")


def verdict(qid: str, model: str = "a", quality: float = 1.0, tenant: str = "t") -> dict:
    return history_feedback({"query_id": qid, "tenant": tenant, "model": model, "quality": quality, "ts_ms": 7})


def fold(serve: ServeState, records: list[dict]) -> None:
    """As the history follower does: each record through Avro, then apply, then the offset moves on."""
    for r in records:
        serve.apply(Event("history", CODEC.decode("history", CODEC.encode("history", r)), "p.history",
                          (0, serve.offset)))
        serve.offset += 1


def picture(serve: ServeState) -> tuple:
    """What a replica holds: the history's records and size, the router state, the offset."""
    records = [(r.query_id, r.tenant, dict(r.costs), dict(r.quality), r.winner) for r in serve.history.records]
    return records, len(serve.history), json.dumps(serve.router_state.to_json(), sort_keys=True), serve.offset


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"))


def test_each_serve_worker_snapshots_to_its_own_folder(tmp_path):
    assert Runtime.build(Settings(home=tmp_path)).history_dir == tmp_path / "history" / "0"
    assert Runtime.build(Settings(home=tmp_path, serve_worker=2)).history_dir == tmp_path / "history" / "2"


def test_a_snapshot_round_trip_keeps_the_history_the_domains_and_the_offset(tmp_path):
    rt = Runtime.build(Settings(home=tmp_path, serve_worker=1))
    serve = rt.serving()
    fold(serve, [delivery(serve, 0), delivery(serve, 1), verdict("q0", "b", 0.0), delivery(serve, 2),
                 delivery(serve, 0)])  # a redone delivery keeps the first
    assert len(serve.history) == 3 and serve.offset == 5 and serve.router_state.domains["ids"]
    rt.save()
    assert (tmp_path / "history" / "1" / OFFSET_SNAPSHOT).exists()
    again = Runtime.build(Settings(home=tmp_path, serve_worker=1)).serving()
    assert again is not serve and picture(again) == picture(serve)
    assert again.known("q0", "t").quality == {"a": None, "b": 0.0}
    # Both go on alike from there: the tail after the snapshot's offset.
    tail = [delivery(serve, 3), verdict("q3", "a", 1.0), delivery(serve, 4, tenant="u")]
    fold(serve, tail)
    fold(again, tail)
    assert picture(again) == picture(serve)
    # Another worker's folder is not this one's: it starts empty, at offset 0.
    other = Runtime.build(Settings(home=tmp_path, serve_worker=0)).serving()
    assert (len(other.history), other.offset, other.router_state.domains["ids"]) == (0, 0, [])


def test_an_unreadable_offset_snapshot_is_a_store_error(tmp_path, settings):
    serve = ServeState.build(settings, None)
    fold(serve, [delivery(serve, 0)])
    serve.save(tmp_path)
    (tmp_path / OFFSET_SNAPSHOT).write_text("{not json")
    with pytest.raises(StoreError, match="history offset snapshot"):
        ServeState.build(settings, tmp_path)


def _bad(serve: ServeState) -> list[tuple[str, dict]]:
    good = delivery(serve, 4)
    dim = serve.history.dim
    return [
        ("no vector", {**good, "vector": None}),
        ("short vector", {**good, "vector": vector_bytes(np.ones(dim - 1, np.float32))}),
        ("long vector", {**good, "vector": vector_bytes(np.ones(dim + 7, np.float32))}),
        ("NaN vector", {**good, "vector": vector_bytes(np.full(dim, np.nan, np.float32))}),
        ("zero vector", {**good, "vector": vector_bytes(np.zeros(dim, np.float32))}),
        ("ragged bytes", {**good, "vector": b"\x00" * 5}),
        ("unknown event", {**good, "event": "undelivery"}),
        ("no query id", {k: v for k, v in good.items() if k != "query_id"}),  # the router alone would take it
        ("feedback without a model", {k: v for k, v in verdict("q0").items() if k != "model"}),
    ]


@pytest.mark.parametrize("case", range(9))
@pytest.mark.parametrize("learnt", [0, 3])
def test_apply_of_a_bad_record_changes_neither_the_history_nor_the_router(settings, case, learnt):
    serve = ServeState.build(settings, None)
    fold(serve, [delivery(serve, i) for i in range(learnt)])
    name, record = _bad(serve)[case]
    before = picture(serve)
    with pytest.raises(Exception):  # noqa: B017, PT011 - which error is each fold's; that it raised is the contract
        serve.apply(Event("history", record))
    assert picture(serve) == before, name
    fold(serve, [delivery(serve, 4)])  # and the replica goes on
    assert serve.known("q4", "t") is not None
