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
    await route_batch(h.rt, h.rt.serving(), msgs)


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
    from selfevolve.routing.embed import embedding_dim

    saved = History(dim=embedding_dim(settings))
    saved.add(np.ones(saved.dim, np.float32), Record("q1"))
    saved.save(tmp_path / "history" / "0")  # serve worker 0's folder
    _, serve = create_app(settings, modules=(), role="serve")
    _, history = create_app(settings, modules=(), role="history")
    assert len(serve.serving().history) == 1 and len(history.serving().history) == 0
    history.save()  # a no-op: the serve worker's snapshot stays as it was
    assert len(History.load(tmp_path / "history" / "0")) == 1


def test_a_decision_carries_the_query_vector_its_event_time_and_the_latency_measured_by_the_host(harness):
    from selfevolve.wire.records import vector_of

    h = harness("streams.router")
    text = "Which gas do plants absorb?"
    asyncio.run(_route(h, h.rt.codec.encode("query", {"query_id": "q-1", "text": text, "tenant": "t1",
                                                      "metadata": {}, "ts_ms": 1234})))
    ((topic, _, d, key),) = h.sent
    assert (topic, key, d["ts_ms"], d["source"]) == (h.rt.topics.route_decisions, "t1/q-1", 1234,
                                                     f"{h.rt.topics.queries}:0:0")
    assert d["decision_ms"] > 0.0  # measured around the fold's step, not by it
    assert (vector_of(d) == h.rt.serving().embedder.encode([text])[0]).all()


def test_the_router_state_and_history_survive_a_restart_and_evolution_is_replayed_not_restored(harness):
    from selfevolve.evolution import hierarchy
    from selfevolve.flow.events import Event
    from streams.evolution_follow import follow

    from selfevolve.scoring.arbiter import Verdict
    from selfevolve.wire.records import history_delivery, vector_of

    h = harness("streams.router")
    asyncio.run(_route(h, _query(h.rt.codec, "q-1", "Which gas do plants absorb?")))
    serve = h.rt.serving()
    assert serve.router_state.domains["ids"] == []  # routing places a query read only
    # Its delivery, as the history follower folds it, teaches the domains and the history.
    ((_, _, d, _),) = h.sent
    v = Verdict("q-1", "m", "A", 1.0, {}, ("m",), (), 0.001, d["strategy"], 1, {"m": 0.001})
    serve.apply(Event("history", history_delivery(v, "t1", "Which gas do plants absorb?", vector_of(d), -1, 5, "")))
    serve.offset = 1
    follow(h.rt, Event("strategy", {"theta_high": 0.9, "theta_low": 0.1, "domain": -1, "reason": "", "ts_ms": 1}))
    assert (serve.router_state.theta_high, serve.router_state.theta_low) == (0.9, 0.1)  # the follower applied it
    h.rt.save()
    again = harness("streams.router").rt.serving()  # same home: a restarted serve worker
    assert again.router_state.domains == serve.router_state.domains and again.router_state.domains["ids"]
    assert (len(again.history), again.offset) == (1, 1) and again.known("q-1", "t1") is not None
    # Thresholds and roles come back from the strategy and model-events topics (recover), not the snapshot.
    assert (again.router_state.theta_high, again.router_state.theta_low) == (0.80, 0.50)
    assert again.router_state.hierarchy == hierarchy.from_catalogue(again.catalogue)


def test_a_strategy_the_router_fold_refuses_is_skipped_by_a_serve_worker_and_the_next_applies(harness):
    """Serve workers follow the strategy topic without a consumer group (every one reads every event): a
    refused event is skipped, by each alike; the history role, which runs once, dead-letters it."""
    from streams.evolution_follow import _apply

    h = harness("streams.router", "streams.model_events")
    assert "strategy" not in h.app.agents  # a task of the worker, not a Faust agent

    def strategy(offset: int, high: float, low: float) -> SimpleNamespace:
        value = h.rt.codec.encode("strategy", {"theta_high": high, "theta_low": low, "reason": "t", "ts_ms": 1})
        return SimpleNamespace(topic=h.rt.topics.strategy, partition=0, offset=offset, key=None, value=value)

    _apply(h.rt, "strategy", strategy(0, 0.4, 0.6))  # θl > θh
    state = h.rt.serving().router_state
    assert (state.theta_high, state.theta_low) == (0.80, 0.50)
    _apply(h.rt, "strategy", strategy(1, 0.85, 0.3))
    state = h.rt.serving().router_state
    assert (state.theta_high, state.theta_low) == (0.85, 0.3) and h.of_kind("dead_letter") == []


def test_the_history_role_dead_letters_a_strategy_its_folds_refuse(tmp_path):
    from selfevolve.config import Settings
    from streams.app import create_app

    from streams.metalearner import MetaLearnerHost

    app, rt = create_app(Settings(topic_prefix="agents.", home=tmp_path), modules=("streams.model_events",),
                         role="history")
    host = MetaLearnerHost.attach(rt)
    sent = []

    async def capture(topic, kind, record, key):
        sent.append((kind, record))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    rt.send = capture

    def strategy(high: float, low: float) -> bytes:
        return rt.codec.encode("strategy", {"theta_high": high, "theta_low": low, "reason": "t", "ts_ms": 1})

    async def run():
        async with app.agents["strategy"].test_context() as agent:
            await agent.put(strategy(0.4, 0.6))  # θl > θh: the meta-learner's fold refuses it
            await agent.put(strategy(0.85, 0.3))
            for _ in range(200):
                if sent:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(run())
    ((kind, letter),) = sent
    assert kind == "dead_letter" and "θ" in letter["reason"]
    assert (host.state.theta_high, host.state.theta_low) == (0.85, 0.3)


@pytest.mark.parametrize("out, topic", [
    (("route_decision", "route-decisions"), "agents.route-decisions"),
    (("inference_request", "inference-requests.openai"), "agents.inference-requests.openai"),
    (("answer", "answers.acme"), "agents.answers.acme"),
    (("answer", "answers"), "agents.answers"),
    (("history", "history"), "agents.history"),  # deliveries and verdicts: one topic every replica folds
])
def test_send_out_sends_to_the_topic_of_the_stage(harness, out, topic):
    from selfevolve.flow.events import Out

    h = harness()
    assert h.rt.topic_of(Out(out[0], {}, None, out[1])) == topic


@pytest.mark.parametrize("kind, stage, match", [
    ("delivery", "history", "cannot go to stage"),  # no kind of its own: a history record's event
    ("history", "", "cannot go to stage"),
    ("history", "history.acme", "no per-backend or per-tenant topics"),
    ("answer", "scores", "cannot go to stage"),
    ("answer", "answers.Not-A-Tenant", "invalid tenant name"),
    ("score", "scores.x", "no per-backend or per-tenant topics"),
])
def test_send_out_refuses_mismatched_kinds_and_stages(harness, kind, stage, match):
    from selfevolve.errors import SelfEvolveError
    from selfevolve.flow.events import Out

    h = harness()
    with pytest.raises(SelfEvolveError, match=match):
        asyncio.run(h.rt.send_out(Out(kind, {}, None, stage)))
    assert h.sent == []


def test_a_runtime_copy_made_before_the_serve_state_was_built_shares_it(harness):
    h = harness("streams.router")
    sending = h.rt.through(object())  # e.g. a task's transactional producer, before anything was loaded
    assert sending.serving() is h.rt.serving() is h.rt.through(object()).serving()
