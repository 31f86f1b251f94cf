"""The router: valid queries become decisions, bad ones dead letters, without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from selfevolve.routing import PARALLEL
from streams.router import route_batch


async def _route(h, *payloads: bytes) -> None:
    """One batch, as one poll of the router's consumer would hand it."""
    msgs = [SimpleNamespace(topic=h.rt.topics.queries, partition=0, offset=i, key=None, value=value)
            for i, value in enumerate(payloads)]
    await route_batch(h.rt, h.rt.routing(), msgs)


def _query(codec, qid: str, text: str, tenant: str = "t1") -> bytes:
    return codec.encode("query", {"query_id": qid, "text": text, "tenant": tenant,
                                  "metadata": {"sample_id": qid}, "ts_ms": 1})


@pytest.mark.parametrize("payload_factory, reason", [
    (lambda c: b"\x00garbage", "not Avro single-object encoding"),
    (lambda c: c.encode("feedback", {"query_id": "q", "model": "m", "quality": 1.0, "ts_ms": 1}), "wrong schema"),
    (lambda c: _query(c, "big", "x" * 40_000), "over the 32768-byte limit"),
    (lambda c: _query(c, "blank", "   "), "text"),
])
def test_bad_query_goes_to_dead_letter_and_the_next_is_routed(harness, payload_factory, reason):
    h = harness("streams.router")

    asyncio.run(_route(h, payload_factory(h.rt.codec),
                       _query(h.rt.codec, "ok-1", "What is the boiling point of water?")))
    letters = h.of_kind("dead_letter")
    assert len(letters) == 1 and reason in letters[0]["reason"]
    decisions = h.of_kind("route_decision")
    assert [d["query_id"] for d in decisions] == ["ok-1"]


def test_empty_history_routes_in_parallel_with_the_query_metadata(harness):
    h = harness("streams.router")

    asyncio.run(_route(h, _query(h.rt.codec, "q-1", "Which gas do plants absorb?")))
    (d,) = h.of_kind("route_decision")
    # Nothing is known yet, so similarity is 0 and the router explores several tiers.
    assert d["strategy"] == PARALLEL and d["similarity"] == 0.0 and len(d["models"]) >= 2
    assert d["metadata"] == {"sample_id": "q-1"} and d["plan"]


def test_an_unknown_stream_worker_role_is_a_clear_error(tmp_path):
    from selfevolve.config import Settings
    from selfevolve.errors import ConfigError
    from streams.app import create_app

    with pytest.raises(ConfigError, match="unknown stream worker role 'routing'; expected one of serve, history"):
        create_app(Settings(home=tmp_path), role="routing")


def test_only_the_serve_role_reads_or_writes_the_routing_history(tmp_path):
    """The history role must not load the snapshot the serve worker may be rewriting at that moment."""
    import numpy as np

    from selfevolve.config import Settings
    from selfevolve.routing.history import History, Record
    from streams.app import create_app

    settings = Settings(home=tmp_path, topic_prefix="roles.")
    saved = History()
    saved.add(np.ones(384, np.float32), Record("q1"))
    saved.save(tmp_path / "history")
    _, serve = create_app(settings, modules=(), role="serve")
    _, history = create_app(settings, modules=(), role="history")
    assert len(serve.routing()["history"]) == 1 and len(history.routing()["history"]) == 0
    history.save()  # a no-op: the serve worker's snapshot stays as it was
    assert len(History.load(tmp_path / "history")) == 1
