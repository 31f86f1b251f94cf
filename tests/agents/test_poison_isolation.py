"""One record that makes its handler raise is dead-lettered, and the rest of its batch or stream goes on."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from selfevolve.errors import StoreError
from streams.router import route_batch
from streams.scorer import Scorer, score_batch

MAMMAL = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel\nAnswer:"


def _msgs(topic: str, values: list[bytes]) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=topic, partition=0, offset=i, key=f"k{i}".encode(), value=v)
            for i, v in enumerate(values)]


def _query(codec, qid: str, text: str) -> bytes:
    return codec.encode("query", {"query_id": qid, "text": text, "tenant": "t1", "metadata": {}, "ts_ms": 1})


def test_a_query_that_breaks_the_batch_wide_embedding_is_the_only_one_dead_lettered(harness):
    h = harness("streams.router")
    serve = h.rt.serving()
    encode = serve.embedder.encode

    def fussy(texts):  # an embedder that chokes on one text, failing the whole batch call
        if any("BOOM" in t for t in texts):
            raise RuntimeError("embedder choked")
        return encode(texts)

    serve.embedder.encode = fussy
    values = [_query(h.rt.codec, "ok-1", "What is 2 plus 2?"), _query(h.rt.codec, "bad", "BOOM BOOM"),
              _query(h.rt.codec, "ok-2", "Name a colour.")]
    asyncio.run(route_batch(h.rt, serve, _msgs(h.rt.topics.queries, values)))
    assert sorted(d["query_id"] for d in h.of_kind("route_decision")) == ["ok-1", "ok-2"]
    (letter,) = h.of_kind("dead_letter")
    assert (letter["reason"], letter["error_type"], letter["offset"]) == ("embedder choked", "RuntimeError", 1)
    assert letter["payload_len"] == len(values[1])


def test_an_oversized_record_is_dead_lettered_by_length_before_decoding(harness):
    h = harness("streams.router", max_record_bytes=1000)
    big = b"\xc3\x01" + b"\x00" * 5000  # not even valid Avro: the length alone condemns it
    asyncio.run(route_batch(h.rt, h.rt.serving(), _msgs(h.rt.topics.queries, [big])))
    (letter,) = h.of_kind("dead_letter")
    assert letter["reason"] == "record is 5002 bytes, over the 1000-byte limit"
    assert len(letter["payload"]) == h.rt.settings.dead_letter_payload_bytes < letter["payload_len"] == 5002


def _decision(h, qid: str, **changes) -> dict:
    """The router fold's decision on a t1 query, with `changes` forged into it."""
    from selfevolve.flow.events import Event

    serve = h.rt.serving()
    query = {"query_id": qid, "text": MAMMAL, "tenant": "t1", "metadata": {}, "ts_ms": int(time.time() * 1000)}
    _, (out,) = serve.router_fold.step(serve.router_state, Event("query", query, h.rt.topics.queries, (0, 0)))
    return {**out.record, **changes}


@pytest.mark.parametrize(("forged", "error_type", "reason"), [
    ({"plan": "{not json"}, "JSONDecodeError", "Expecting property name"),
    ({"plan": "[1, 2]"}, "ValidationError", "must be a JSON object"),
])
def test_a_decision_whose_plan_is_not_a_decision_is_dead_lettered_and_the_batch_goes_on(harness, forged,
                                                                                         error_type, reason):
    h = harness()
    good, bad = _decision(h, "good"), _decision(h, "bad", **forged)
    msgs = _msgs(h.rt.topics.route_decisions, [h.rt.codec.encode("route_decision", r) for r in (bad, good)])
    asyncio.run(score_batch(h.rt, Scorer(h.rt, h.rt.serving()), msgs))
    (letter,) = h.of_kind("dead_letter")
    assert letter["error_type"] == error_type and reason in letter["reason"] and letter["offset"] == 0
    assert {r["query_id"] for r in h.of_kind("inference_request")} == {"good"}


def test_a_decision_whose_plan_names_another_query_is_dead_lettered_not_silently_lost(harness):
    # Found by the fuzz test: a bit flip in the record's id left the plan's id intact; the calls went out under
    # the plan's id, the scorer logged the record's, and the query was neither answered nor dead-lettered.
    h = harness()
    good, bad = _decision(h, "good"), _decision(h, "fz-342399")
    bad = {**bad, "query_id": "fz-342299"}
    msgs = _msgs(h.rt.topics.route_decisions, [h.rt.codec.encode("route_decision", r) for r in (bad, good)])
    asyncio.run(score_batch(h.rt, Scorer(h.rt, h.rt.serving()), msgs))
    (letter,) = h.of_kind("dead_letter")
    assert "plan names query_id 'fz-342399'" in letter["reason"] and letter["offset"] == 0
    assert {r["query_id"] for r in h.of_kind("inference_request")} == {"good"}


def test_a_decision_whose_log_would_outgrow_a_changelog_record_is_dead_lettered_and_nothing_kept(harness):
    # The fuzz test's crash: a forged decision near the record limit made the scorer's changelog write of
    # its log (JSON, escaped) larger than the broker accepts, which failed every retry of the batch.
    h = harness(kafka_max_message_bytes=20_000, max_record_bytes=100_000)
    import json

    good, bad = _decision(h, "good"), _decision(h, "huge")
    plan = json.loads(bad["plan"])
    assert "text" in plan
    bad["plan"] = json.dumps({**plan, "text": "\u0001" * 3_000})  # 18 KB here; escaped again in the log
    msgs = _msgs(h.rt.topics.route_decisions, [h.rt.codec.encode("route_decision", r) for r in (bad, good)])
    scorer = Scorer(h.rt, h.rt.serving())
    asyncio.run(score_batch(h.rt, scorer, msgs))
    (letter,) = h.of_kind("dead_letter")
    assert "over the" in letter["reason"] and "record limit" in letter["reason"] and letter["offset"] == 0
    assert {r["query_id"] for r in h.of_kind("inference_request")} == {"good"}
    assert "t1/huge" not in scorer.states[0].logs and not any("huge" in k for _, k in scorer.table.pending)


def test_the_scorer_dead_letters_an_oversized_record_by_length_before_decoding(harness):
    h = harness(max_record_bytes=1000)
    big = b"\xc3\x01" + b"\x00" * 5000
    asyncio.run(score_batch(h.rt, Scorer(h.rt, h.rt.serving()), _msgs(h.rt.topics.route_decisions, [big])))
    (letter,) = h.of_kind("dead_letter")
    assert letter["reason"] == "record is 5002 bytes, over the 1000-byte limit"


def test_a_decision_naming_a_model_not_in_the_catalogue_is_dead_lettered(harness):
    import json

    h = harness()
    good, bad = _decision(h, "good"), _decision(h, "ghost")
    plan = json.loads(bad["plan"])
    plan["models"] = ["no-such-model"]
    plan["escalation"] = [["no-such-model"]]
    bad = {**bad, "plan": json.dumps(plan), "models": ["no-such-model"]}
    msgs = _msgs(h.rt.topics.route_decisions, [h.rt.codec.encode("route_decision", r) for r in (good, bad)])
    asyncio.run(score_batch(h.rt, Scorer(h.rt, h.rt.serving()), msgs))
    (letter,) = h.of_kind("dead_letter")
    assert "no-such-model" in letter["reason"] and letter["offset"] == 1
    assert {r["query_id"] for r in h.of_kind("inference_request")} == {"good"}


def test_a_stream_agent_dead_letters_a_record_its_handler_fails_on_and_goes_on(harness):
    applied = []

    def follower(event):
        if event.record["theta_high"] > 0.95:
            raise ValueError("theta_high out of range")
        applied.append(event.record["theta_high"])

    h = harness("streams.model_events", role="history")  # serve workers skip it instead (group-less followers)
    h.rt.followers.append(follower)

    def strategy(theta_high: float) -> bytes:
        return h.rt.codec.encode("strategy", {"theta_high": theta_high, "theta_low": 0.5, "reason": "t", "ts_ms": 1})

    async def run():
        async with h.agent("strategy").test_context() as agent:
            for value in (strategy(0.8), strategy(0.99), strategy(0.85)):
                await agent.put(value)
            await h.wait_for("dead_letter", 1, timeout=10)

    asyncio.run(run())
    assert applied == [0.8, 0.85]
    (letter,) = h.of_kind("dead_letter")
    assert (letter["reason"], letter["error_type"]) == ("theta_high out of range", "ValueError")


def test_the_model_worker_dead_letters_a_request_it_cannot_serve(tmp_path, monkeypatch):
    from selfevolve.models.catalogue import Catalogue
    from selfevolve.wire.codec import Codec
    from selfevolve.config import Settings
    from selfevolve.wire.topics import Topics
    from workers import model_worker

    async def explode(*a, **kw):
        raise RuntimeError("backend blew up")

    monkeypatch.setattr(model_worker, "serve_request", explode)
    settings = Settings(home=tmp_path, dead_letter_payload_bytes=8)
    codec, topics = Codec.from_dir(), Topics.from_settings(settings)
    request = codec.encode("inference_request", {
        "request_id": "q:0:m", "query_id": "q", "tenant": "t1", "model": "m", "text": "hi", "strategy": "targeted",
        "stage": 0, "attempt": 0, "fallback_from": None, "metadata": {}, "ts_ms": 1})
    (msg,) = _msgs(topics.requests_for("replay"), [request])
    topic, key, value = asyncio.run(model_worker._handle(msg, codec, Catalogue.load(settings.catalogue), {},
                                                         settings, topics))
    letter = codec.decode("dead_letter", value)
    assert topic == topics.dead_letter and key == b"k0"
    assert (letter["reason"], letter["payload"]) == ("backend blew up", request[:8])
    assert letter["payload_len"] == len(request)


class _Store:
    """Rejects rows whose reason is 'poison'; down=True: rejects everything, SELECT 1 included."""

    def __init__(self, down: bool = False):
        self.rows, self.down = [], down

    def insert(self, kind, rows):
        if self.down or any(r.get("reason") == "poison" for r in rows):
            raise StoreError("rejected")
        self.rows += rows

    def query(self, sql):
        if self.down:
            raise StoreError("down")
        return ["1"], [(1,)]


def test_the_sink_skips_and_counts_a_row_the_store_rejects_but_not_a_store_that_is_down(tmp_path):
    from selfevolve.config import Settings
    from streams.runtime import Runtime
    from streams.sink import insert_rows, rows_by_kind

    rt = Runtime.build(Settings(home=tmp_path))
    rows = [{"reason": "fine"}, {"reason": "poison"}, {"reason": "also fine"}]
    store = _Store()
    insert_rows(store, "dead_letter", rows, rt)
    assert store.rows == [rows[0], rows[2]] and rt.sink_skipped == 1
    insert_rows(store, "dead_letter", [{"reason": "poison"}], rt)  # a batch of one bad row: skipped too
    assert rt.sink_skipped == 2
    with pytest.raises(StoreError):
        insert_rows(_Store(down=True), "dead_letter", rows, rt)
    assert rt.sink_skipped == 2
    got = rows_by_kind(rt, _msgs(rt.topics.answers, [b"junk"]) + _msgs("not-a-topic-of-ours", [b"x"]))
    assert dict(got) == {} and rt.sink_skipped == 4


@pytest.mark.parametrize("error", ["CommitFailedError", "IllegalStateError"])
def test_the_sink_stores_its_batch_and_goes_on_when_the_commit_after_it_fails(tmp_path, monkeypatch, error):
    # A revoke flush while the pattern subscription takes in a new tenant's topics has nothing assigned:
    # aiokafka's commit raised IllegalStateError and the history worker exited (seen by the fuzz work).
    import aiokafka.errors

    import streams.kafka_io
    from selfevolve.config import Settings
    from streams.runtime import Runtime
    from streams.sink import run_sink

    rt = Runtime.build(Settings(home=tmp_path, sink_batch_size=1))
    stop = asyncio.Event()
    record = {"source_topic": "x", "partition": 0, "offset": 0, "reason": "r", "error_type": "E",
              "payload": b"", "payload_len": 0, "payload_sha256": "", "ts_ms": 1}
    (msg,) = _msgs(rt.topics.dead_letter, [rt.codec.encode("dead_letter", record)])

    class Consumer:
        polls = 0

        async def getmany(self, timeout_ms, max_records):
            self.polls += 1
            if self.polls > 1:
                stop.set()
                return {}
            return {("tp", 0): [msg]}

        async def commit(self, offsets):
            raise getattr(aiokafka.errors, error)("no partitions assigned")

        async def stop(self):
            pass

    async def consumer(*args, **kwargs):
        return Consumer()

    monkeypatch.setattr(streams.kafka_io, "committing_consumer", consumer)
    store = _Store()
    asyncio.run(run_sink(rt, store, stop))  # returns normally: the rows are stored, the commit is left
    assert [r["reason"] for r in store.rows] == ["r"]
