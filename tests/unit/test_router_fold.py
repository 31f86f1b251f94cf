"""The router fold: one decision per query from state and history alone; batches route as one by one does;
routing is read only, the domains are learnt from history deliveries; model events and strategy events change
what later queries see; the same events give the same records (replicas fed one history topic agree)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.evolution import hierarchy
from selfevolve.flow.events import Event, Out
from selfevolve.flow.router import RouterFold, RouterState
from selfevolve.models.catalogue import Catalogue, ModelSpec, Role
from selfevolve.routing import HYBRID, PARALLEL, TARGETED
from selfevolve.routing import domains
from selfevolve.routing.history import History, Record
from selfevolve.scoring import arbiter
from selfevolve.wire.codec import Codec
from selfevolve.wire.records import decision_from_record, history_delivery, history_feedback, vector_bytes, vector_of

CAT = Catalogue([
    ModelSpec("small", "replay", Role.STUDENT, 0, cost_per_call=0.001),
    ModelSpec("spare", "replay", Role.STUDENT, 0, cost_per_call=0.0005, reserve=True),
    ModelSpec("mid", "replay", Role.TA, 1, cost_per_call=0.002),
    ModelSpec("big", "replay", Role.TEACHER, 2, cost_per_call=0.01),
    ModelSpec("sup", "replay", Role.SUPERVISOR, 3, cost_per_call=0.05),
])
COST = {"small": 0.001, "mid": 0.002, "big": 0.01, "sup": 0.05}
TOPICS = ("math", "code", "poem")  # far apart: each becomes its own domain
CODEC = Codec.from_dir()


class TopicEmbedder:
    """Pure and fast: a text `<topic> <anything>` lands near its topic's axis, off it by a hash of the text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = []
        for t in texts:
            axis = TOPICS.index(t.split()[0]) if t.split()[0] in TOPICS else len(TOPICS)
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            v = 0.012 * np.random.default_rng(seed).standard_normal(384)  # |noise| ~ 0.23
            v[axis] += 1.0
            out.append((v / np.linalg.norm(v)).astype(np.float32))
        return np.stack(out) if out else np.zeros((0, 384), np.float32)


def _history() -> History:
    """Past answered math queries where 'mid' was right and 'small' wrong."""
    h, emb = History(), TopicEmbedder()
    for i in range(12):
        h.add(emb.encode([f"math past {i}"])[0],
              Record(f"p{i}", costs=dict(COST), quality={"small": 0.0, "mid": 1.0, "big": 1.0, "sup": 1.0}))
    return h


def _fold(history: History | None = None) -> RouterFold:
    return RouterFold(Settings(), CAT, _history() if history is None else history, TopicEmbedder())


def query(qid: str, text: str, tenant: str = "t", ts_ms: int | None = 5, offset: int = 0) -> Event:
    record = {"query_id": qid, "text": text, "tenant": tenant, "metadata": {"sample_id": qid}}
    if ts_ms is not None:
        record["ts_ms"] = ts_ms
    return Event("query", record, "p.queries", (0, offset))


def delivered(qid: str, text: str, tenant: str = "t", vector: np.ndarray | None = None) -> Event:
    """The history topic's record of q's delivered answer (as the scorer writes it), embedded as routed."""
    v = arbiter.Verdict(qid, "mid", "A", 0.9, {}, ("mid",), (), 0.002, TARGETED, 1, {"mid": 0.002})
    vec = TopicEmbedder().encode([text])[0] if vector is None else vector
    return Event("history", history_delivery(v, tenant, text, vec, -1, 9, "p.queries:0:0"), "p.history", (0, 0))


def strategy(high: float, low: float) -> Event:
    return Event("strategy", {"theta_high": high, "theta_low": low, "domain": -1, "reason": "", "ts_ms": 1})


def activate(model: str, domain: int, role: str = "student") -> Event:
    return Event("model_event", hierarchy.event("activate", model, domain, None, role))


def _run(fold: RouterFold, events, state: RouterState | None = None) -> tuple[RouterState, list[Out]]:
    state = fold.initialize() if state is None else state
    outs: list[Out] = []
    for e in events:
        state, more = fold.step(state, e)
        outs += more
    return state, outs


@pytest.mark.parametrize("event, want", [
    (query("q1", "math what is 2+2", ts_ms=42, offset=7),
     {"query_id": "q1", "tenant": "t", "ts_ms": 42, "source": "p.queries:0:7", "strategy": TARGETED}),
    (query("q2", "code write a loop", tenant="acme", ts_ms=None),
     {"query_id": "q2", "tenant": "acme", "ts_ms": 0, "source": "p.queries:0:0", "strategy": PARALLEL}),
    (Event("query", {"query_id": "q3", "text": "poem a verse", "tenant": "t", "metadata": {}, "ts_ms": 3}),
     {"query_id": "q3", "ts_ms": 3, "source": "", "strategy": PARALLEL}),
])
def test_a_query_gives_one_decision_keyed_by_tenant_and_id_at_its_own_event_time(event, want):
    fold = _fold()
    state, outs = fold.step(fold.initialize(), event)
    (out,) = outs
    assert (out.kind, out.stage, out.key) == ("route_decision", "route-decisions",
                                              f"{want.get('tenant', 't')}/{want['query_id']}")
    assert {k: out.record[k] for k in want} == want
    assert out.record["decision_ms"] == 0.0  # latency is the host's to measure, never the fold's
    # The query's vector travels exactly (float32), so whoever delivers the answer adds the same vector.
    assert np.array_equal(vector_of(out.record), fold.embedder.encode([event.record["text"]])[0])
    assert decision_from_record(out.record).query_id == want["query_id"]
    assert CODEC.decode("route_decision", CODEC.encode("route_decision", out.record))["vector"] == out.record["vector"]
    # Routing places the query read only: far from every domain, it gets the id the next domain will get.
    assert state.domains == fold.initialize().domains and out.record["domain"] == 0


def test_a_latency_passed_by_the_host_is_reported_and_decides_nothing():
    fold = _fold()
    plain = fold.step(fold.initialize(), query("q", "math sum"))[1][0].record
    timed = fold.step(fold.initialize(), Event("query", query("q", "math sum").record, "p.queries", (0, 0),
                                               payload={"decision_ms": 12.5}))[1][0].record
    assert timed["decision_ms"] == 12.5 and {**timed, "decision_ms": 0.0} == plain


def test_events_a_router_does_not_read_change_nothing():
    fold = _fold()
    state = fold.initialize()
    assert fold.step(state, Event("answer", {"query_id": "q"})) == (state, [])


def test_a_model_event_changes_the_catalogue_of_its_domain_only():
    fold = _fold()
    state, _ = _run(fold, [delivered("d0", "math zero"), delivered("d1", "code zero")])
    state, (math_out,) = fold.step(state, query("m0", "math one"))
    state, (code_out,) = fold.step(state, query("c0", "code one"))
    math_domain, code_domain = math_out.record["domain"], code_out.record["domain"]
    assert math_domain != code_domain
    assert "spare" not in decision_from_record(math_out.record).estimates  # a reserve: routed to nowhere
    state, outs = fold.step(state, activate("spare", code_domain))
    assert outs == [] and hierarchy.role(state.hierarchy, "spare", code_domain) == "student"
    state, (math_after, code_after) = fold.step_many(state, [query("m1", "math two"), query("c1", "code two")])
    assert "spare" not in decision_from_record(math_after.record).estimates
    assert "spare" in decision_from_record(code_after.record).estimates


def test_a_strategy_event_sets_the_thresholds_later_decisions_use():
    fold = _fold()
    state, (before,) = fold.step(fold.initialize(), query("a", "math add"))
    assert before.record["strategy"] == TARGETED and before.record["similarity"] < 0.999
    state, outs = fold.step(state, strategy(0.999, 0.2))
    assert outs == [] and (state.theta_high, state.theta_low) == (0.999, 0.2)
    state, (after,) = fold.step(state, query("b", "math add"))
    assert after.record["strategy"] == HYBRID
    assert (after.record["theta_high"], after.record["theta_low"]) == (0.999, 0.2)


@pytest.mark.parametrize("event, match", [
    (strategy(0.4, 0.6), "need 0 <= θl <= θh"),
    (strategy(0.8, -0.1), "need 0 <= θl <= θh"),
    (Event("model_event", {**hierarchy.event("promote", "mid", 0, "ta", "teacher"), "kind": "explode"}),
     "unknown model event kind"),
    (Event("model_event", hierarchy.event("promote", "mid", 0, "ta", None)), "has no new_role"),
])
def test_a_bad_evolution_event_raises_and_changes_nothing(event, match):
    fold = _fold()
    state, _ = fold.step(fold.initialize(), query("a", "math add"))
    before = state.to_json()
    with pytest.raises(ValidationError, match=match):
        fold.step(state, event)
    assert state.to_json() == before


def test_the_same_events_give_the_same_decision_records():
    events = [query("a", "math add", offset=0), query("b", "code loop", offset=1), strategy(0.9, 0.3),
              query("c", "poem rose", offset=2), activate("spare", 0), query("d", "math times", offset=3)]
    first = _run(_fold(), events)
    again = _run(_fold(), events)
    assert [o.record for o in first[1]] == [o.record for o in again[1]]
    assert first[0].to_json() == again[0].to_json()


def test_step_many_embeds_a_batch_in_one_call_or_uses_the_vectors_given():
    fold = _fold()
    events = [query(f"q{i}", f"{TOPICS[i % 3]} item {i}", offset=i) for i in range(5)]
    events.insert(2, strategy(0.9, 0.4))  # other kinds in between: still one call
    fold.embedder.calls.clear()
    _, outs = fold.step_many(fold.initialize(), events)
    assert len(fold.embedder.calls) == 1 and len(outs) == 5
    vectors = fold.embed([e.record for e in events if e.kind == "query"])
    fold.embedder.calls.clear()
    _, given_outs = fold.step_many(fold.initialize(), events, vectors=vectors)
    assert fold.embedder.calls == [] and [o.record for o in given_outs] == [o.record for o in outs]
    with pytest.raises(ValidationError, match="4 vectors for 5 queries"):
        fold.step_many(fold.initialize(), events, vectors=vectors[:4])


def test_a_step_that_raises_leaves_the_state_it_was_given():
    fold = _fold()
    state, _ = fold.step(fold.initialize(), query("a", "math add"))
    before = state.to_json()

    def choke(texts):
        raise RuntimeError("embedder choked")

    fold.embedder.encode = choke
    with pytest.raises(RuntimeError):
        fold.step_many(state, [query("b", "code x"), query("c", "poem y")])
    assert state.to_json() == before


def test_restore_keeps_the_domains_and_rebuilds_evolution_from_the_catalogue_and_settings():
    fold = _fold()
    state, _ = _run(fold, [query("a", "math add"), query("b", "code x"), strategy(0.95, 0.1), activate("spare", 1)])
    back = fold.restore(state.to_json())
    assert back.domains == state.domains and back.hierarchy == hierarchy.from_catalogue(CAT)
    assert (back.theta_high, back.theta_low) == (Settings().theta_high, Settings().theta_low)
    assert fold.restore(state.domains).domains == state.domains  # a domains.json saved before the fold
    assert RouterState.from_json(state.to_json()).to_json() == state.to_json()
    with pytest.raises(ValidationError, match="no domain state"):
        fold.restore({"something": "else"})


# -- batches route as one by one does -------------------------------------------------------------------
EVENTS = st.lists(st.one_of(
    st.tuples(st.just("query"), st.sampled_from(TOPICS + ("misc",)), st.integers(0, 5)),
    st.tuples(st.just("strategy"), st.floats(0.0, 1.2), st.floats(0.0, 1.0)),
    st.tuples(st.just("activate"), st.sampled_from(["spare", "small"]), st.integers(-1, 3)),
    st.tuples(st.just("delivery"), st.sampled_from(TOPICS + ("misc",)), st.integers(0, 5)),
), max_size=14)


def _events(spec) -> list[Event]:
    out = []
    for i, (kind, a, b) in enumerate(spec):
        if kind == "query":
            out.append(query(f"q{i}", f"{a} question {b}", tenant="t" if i % 2 else "u", ts_ms=i, offset=i))
        elif kind == "strategy":
            out.append(strategy(max(a, b), min(a, b)))
        elif kind == "delivery":
            out.append(delivered(f"d{i}", f"{a} answered {b}"))
        else:
            out.append(activate(a, b))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, st.integers(1, 5), st.booleans())
def test_step_many_gives_the_decisions_and_state_of_stepping_one_by_one(spec, cut, small_domains):
    history = _history()
    fold = RouterFold(Settings(max_domains=2 if small_domains else 8), CAT, history, TopicEmbedder())
    events = _events(spec)
    one_state, one_outs = _run(fold, events)
    # The same events in batches of `cut` (batches may mix kinds): one embedding call per run of queries.
    state, outs = fold.initialize(), []
    for i in range(0, len(events), cut):
        state, more = fold.step_many(state, events[i:i + cut])
        outs += more
    assert [o.record for o in outs] == [o.record for o in one_outs]
    assert [(o.key, o.stage) for o in outs] == [(o.key, o.stage) for o in one_outs]
    assert state.to_json() == one_state.to_json()


# -- domains: learnt from history deliveries only; routing places read only -----------------------------
def _frozen(state: RouterState) -> str:
    import json

    return json.dumps(state.to_json(), sort_keys=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TOPICS + ("misc",)), st.integers(0, 3)), max_size=6),
       st.lists(st.tuples(st.sampled_from(TOPICS + ("misc", "other")), st.integers(0, 9)), min_size=1, max_size=8),
       st.integers(1, 3))
def test_routing_any_batch_leaves_the_state_unchanged_and_places_each_query_alone(learnt, batch, max_domains):
    fold = RouterFold(Settings(max_domains=max_domains), CAT, _history(), TopicEmbedder())
    state, _ = _run(fold, [delivered(f"d{i}", f"{t} answered {n}") for i, (t, n) in enumerate(learnt)])
    before = _frozen(state)
    events = [query(f"q{i}", f"{t} asked {n}", offset=i) for i, (t, n) in enumerate(batch)]
    after, outs = fold.step_many(state, events)
    assert after is state and _frozen(state) == before  # the same state object; domains identical
    vecs = fold.embed([e.record for e in events])
    # Each query is placed on the state alone, as one by one would: not on its batch-mates' domains.
    assert [o.record["domain"] for o in outs] == [domains.assign(state.domains, v)[1] for v in vecs]
    for e in events:
        assert fold.step(state, e)[0] is state
    assert _frozen(state) == before


@pytest.mark.parametrize("texts", [
    ["math one"],
    ["math one", "math two", "code one"],
    ["poem a", "code b", "math c", "misc d", "poem e"],
])
@pytest.mark.parametrize("max_domains", [1, 2, 8])
def test_a_delivery_changes_the_domains_exactly_as_assign_many_would(texts, max_domains):
    fold = RouterFold(Settings(max_domains=max_domains), CAT, _history(), TopicEmbedder())
    state = fold.initialize()
    for i, text in enumerate(texts):
        want, _ = domains.assign_many(state.domains, TopicEmbedder().encode([text]), [text])
        state, outs = fold.step(state, delivered(f"d{i}", text))
        assert outs == [] and state.domains == want
    # A verdict teaches the history, not the domains.
    fb = history_feedback({"query_id": "d0", "tenant": "t", "model": "mid", "quality": 1.0, "ts_ms": 1})
    assert fold.step(state, Event("history", fb))[0].domains == state.domains


@pytest.mark.parametrize("vector, match", [
    (None, "384-float vector"),
    (b"", "384-float vector"),
    (vector_bytes(np.ones(383, np.float32)), "384-float vector"),
    (vector_bytes(np.full(384, np.inf, np.float32)), "NaN or an infinity"),
    (vector_bytes(np.zeros(384, np.float32)), "zero or non-finite"),
])
@pytest.mark.parametrize("learnt", [0, 2])
def test_a_delivery_without_a_usable_vector_raises_and_leaves_the_domains(vector, match, learnt):
    """Even on empty domains: a centroid of another width would make every later query's placement raise."""
    fold = _fold()
    state, _ = _run(fold, [delivered(f"d{i}", f"{TOPICS[i]} x") for i in range(learnt)])
    before = _frozen(state)
    bad = Event("history", {**delivered("bad", "math y").record, "vector": vector})
    with pytest.raises(ValidationError, match=match):
        fold.step(state, bad)
    assert _frozen(state) == before
    assert fold.step(state, query("q", "math z"))[1]  # still routes


# -- replicas: the same history records in the same order, then any queries: equal states, equal decisions --
UNIT = st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=4, max_size=4)


def _random_vector(seed: int, axis_weights: list[float]) -> np.ndarray:
    """A random direction near a mix of four axes (so deliveries cluster, merge and spread)."""
    v = 0.05 * np.random.default_rng(seed).standard_normal(384)
    v[:4] += axis_weights
    if np.linalg.norm(v) < 1e-3:
        v[0] += 1.0
    return (v / np.linalg.norm(v)).astype(np.float32)


def _replica(max_domains: int):
    from selfevolve.flow.learning import HistoryFold

    history = _history()
    return RouterFold(Settings(max_domains=max_domains), CAT, history, TopicEmbedder()), HistoryFold(), history


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2**31), UNIT), max_size=10),
       st.lists(st.tuples(st.integers(0, 2**31), UNIT), max_size=5),
       st.lists(st.tuples(st.integers(0, 2**31), UNIT), max_size=5),
       st.tuples(st.integers(0, 2**31), UNIT), st.integers(1, 4), st.integers(1, 3))
def test_replicas_fed_the_same_history_agree_whatever_queries_each_routed(history_spec, mine, theirs, probe,
                                                                          max_domains, cut):
    records = [delivered(f"d{i}", f"misc {i}", vector=_random_vector(s, w)) for i, (s, w) in enumerate(history_spec)]
    records.insert(len(records) // 2, Event("history", history_feedback(
        {"query_id": "d0", "tenant": "t", "model": "mid", "quality": 0.0, "ts_ms": 1})))
    ends = []
    for routed in (mine, theirs):
        router, history_fold, history = _replica(max_domains)
        state = router.initialize()
        queries = [query(f"r{i}", f"misc routed {i}", offset=i) for i in range(len(routed))]
        vecs = np.stack([_random_vector(s, w) for s, w in routed]) if routed else None
        for i, record in enumerate(records):  # interleaved: each replica routes its own queries in between
            if i == len(records) // 3 and queries:
                state, _ = router.step_many(state, queries[:cut], vectors=vecs[:cut])
            state, _ = router.step(state, record)  # as ServeState.apply: router, then the history
            history_fold.step(history, record)
        if queries:
            state, _ = router.step_many(state, queries[cut:], vectors=vecs[cut:])
        probe_vec = _random_vector(*probe)[None, :]
        _, (out,) = router.step_many(state, [query("p", "misc probe", offset=99)], vectors=probe_vec)
        ends.append((_frozen(state), out.record, len(history)))
    assert ends[0] == ends[1]
