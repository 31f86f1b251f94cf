"""The history follower without a broker: each record of the history topic is folded into this worker's
replica, or skipped (by every replica alike), and the offset moves past it either way."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from selfevolve.scoring.arbiter import Verdict
from selfevolve.wire.records import history_delivery, history_feedback
from streams.history_follow import HistoryFollower


def _delivery(serve, qid: str, text: str) -> dict:
    v = Verdict(qid, "m1", "A", 1.0, {}, ("m1", "m2"), (), 0.002, "parallel", 1, {"m1": 0.001, "m2": 0.001})
    return history_delivery(v, "t1", text, serve.embedder.encode([text])[0], -1, 5, "agents.queries:0:0")


def test_the_follower_folds_each_record_and_skips_one_no_fold_accepts(harness):
    h = harness("streams.history_follow")
    serve = h.rt.serving()
    follower = h.rt.history_follower
    assert isinstance(follower, HistoryFollower) and not follower.ready.is_set()
    codec = h.rt.codec
    first = _delivery(serve, "q1", "Which gas do plants absorb?")
    values = [
        codec.encode("history", first),
        b"\x00not avro",                                                              # unreadable
        codec.encode("history", {**_delivery(serve, "q2", "Name a mammal."),
                                 "vector": np.ones(3, np.float32).tobytes()}),       # no fold takes it
        codec.encode("history", history_feedback({"query_id": "q1", "tenant": "t1", "model": "m2",
                                                  "quality": 0.0, "ts_ms": 9})),
        codec.encode("history", {**first, "winner": "m2"}),                          # redone: keeps the first
    ]
    for offset, value in enumerate(values, start=7):
        follower.fold(SimpleNamespace(topic=h.rt.topics.history, partition=0, offset=offset, key=None, value=value))
    assert serve.offset == 12 and (follower.folded, follower.skipped) == (3, 2)
    rec = serve.known("q1", "t1")
    assert (len(serve.history), rec.winner, rec.quality) == (1, "m1", {"m1": None, "m2": 0.0})
    assert sum(serve.router_state.domains["counts"]) == 1  # the redone delivery changes no domain either
    assert h.of_kind("dead_letter") == []  # N workers would write N: the answer path dead-letters, not this
