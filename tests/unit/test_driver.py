"""The in-memory driver on tiny fake folds: topic order, responder, history records, dead letters, windows."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from selfevolve.flow import dataflow, driver
from selfevolve.flow.driver import Driver, DriverError
from selfevolve.flow.events import Event, Out

SEEN: list[tuple[str, str, str]] = []  # (fold, history event, query id) as the folds reading history saw them


class Router:
    """query -> route_decision naming two models; refuses a query whose text is 'poison'. Notes the history
    records it reads (the real router learns its domains from them) without counting them in its state."""

    name = "router"
    consumes = ("query", "history")

    def __init__(self) -> None:
        self.batches: list[int] = []

    def initialize(self) -> int:
        return 0

    def step(self, state: int, event: Event):
        if event.kind == "history":
            SEEN.append((self.name, event.record["event"], event.record["query_id"]))
            return state, []
        q = event.record
        if q["text"] == "poison":
            raise ValueError("cannot route poison")
        d = {"query_id": q["query_id"], "tenant": q["tenant"], "models": ["a", "b"], "ts_ms": q["ts_ms"]}
        return state + 1, [Out("route_decision", d, q["query_id"], "route-decisions")]


class BatchRouter(Router):
    def step_many(self, state: int, events: list[Event]):
        self.batches.append(len(events))
        outs = []
        for e in events:
            state, more = self.step(state, e)
            outs += more
        return state, outs


@dataclass
class ScorerState:
    open: dict = field(default_factory=dict)  # query id -> responses so far


class Scorer:
    """decision -> two requests; two responses -> an answer, a tenant copy and a history delivery record."""

    name = "scorer"
    consumes = ("route_decision", "inference_response")

    def initialize(self) -> ScorerState:
        return ScorerState()

    def step(self, state: ScorerState, event: Event):
        r = event.record
        if event.kind == "route_decision":
            reqs = [Out("inference_request", {"query_id": r["query_id"], "tenant": r["tenant"], "model": m,
                                              "ts_ms": r["ts_ms"]}, r["query_id"], "inference-requests.replay")
                    for m in r["models"]]
            return replace(state, open={**state.open, r["query_id"]: []}), reqs
        got = state.open[r["query_id"]] + [r]
        if len(got) < 2:
            return replace(state, open={**state.open, r["query_id"]: got}), []
        best = max(got, key=lambda x: x["answer"])
        ans = {"query_id": r["query_id"], "tenant": r["tenant"], "model": best["model"],
               "models_called": [x["model"] for x in got], "ts_ms": r["ts_ms"]}
        rest = {k: v for k, v in state.open.items() if k != r["query_id"]}
        return replace(state, open=rest), [Out("answer", ans, r["tenant"], "answers"),
                                           Out("answer", ans, r["tenant"], f"answers.{r['tenant']}"),
                                           Out("history", {**ans, "event": "delivery"}, r["query_id"], "history",
                                               payload=("verdict", r["query_id"]))]


class Feedback:
    """feedback -> one history record (event=feedback)."""

    name = "feedback"
    consumes = ("feedback",)

    def initialize(self) -> None:
        return None

    def step(self, state: None, event: Event):
        return state, [Out("history", {**event.record, "event": "feedback"}, event.record["query_id"], "history")]


class History:
    name = "history"
    consumes = ("history",)

    def initialize(self) -> list:
        return []

    def step(self, state: list, event: Event):
        SEEN.append((self.name, event.record["event"], event.record["query_id"]))
        return state + [(event.record["event"], event.record["query_id"], event.payload)], []


class Answers:
    """Reads the answers topic: must see each answer once (the shared topic, not the tenant's copy)."""

    name = "answers"
    consumes = ("answer",)

    def initialize(self) -> list:
        return []

    def step(self, state: list, event: Event):
        SEEN.append((self.name, "answer", event.record["query_id"]))
        return state + [(event.record["query_id"], event.topic, event.at)], []


def respond(req: dict) -> dict:
    return {**req, "answer": {"a": "x", "b": "y"}[req["model"]], "ok": True}


def queries(*texts: str) -> list[dict]:
    return [{"query_id": f"q{i}", "tenant": "t", "text": t, "metadata": {}, "ts_ms": i * 1000}
            for i, t in enumerate(texts)]


def folds(router=None):
    """In dataflow.GRAPH's order, as dataflow.build gives them."""
    return [router or Router(), Scorer(), Feedback(), History(), Answers()]


@pytest.fixture(autouse=True)
def _clear_seen():
    SEEN.clear()


def test_topic_order_responder_and_history_deliveries():
    r = driver.run(folds(), [("query", q) for q in queries("one", "two")], respond)
    # The router decides both queries before the scorer sees either decision, as the topics deliver them.
    kinds = [o.kind for o in r.log]
    assert kinds[:4] == ["query", "query", "route_decision", "route_decision"]
    assert [a["query_id"] for a in r.of("answer")] == ["q0", "q1"]
    assert all(a["model"] == "b" for a in r.of("answer"))  # every request got the responder's answer
    assert len(r.of("inference_request")) == len(r.of("inference_response")) == 4
    # Deliveries travel on the history topic like any record; the payload (the Verdict) rides along in memory.
    assert r.states["history"] == [("delivery", "q0", None), ("delivery", "q1", None)]
    assert [d["query_id"] for d in r.of("history")] == ["q0", "q1"]
    assert [(o.record["query_id"], o.stage, o.payload) for o in r.deliveries] == [
        ("q0", "history", ("verdict", "q0")), ("q1", "history", ("verdict", "q1"))]
    # The tenant's copy is sent (log) but neither stored nor read: one answer each on the shared topic.
    assert [o.stage for o in r.log if o.kind == "answer"] == ["answers", "answers.t"] * 2
    assert r.states["answers"] == [("q0", "selfevolve.answers", (0, 0)), ("q1", "selfevolve.answers", (0, 1))]


def test_a_step_that_raises_is_dead_lettered_and_the_run_goes_on():
    r = driver.run(folds(), [("query", q) for q in queries("one", "poison", "three")], respond)
    assert [a["query_id"] for a in r.of("answer")] == ["q0", "q2"]
    (dl,) = r.dead_letters
    assert dl["source_topic"] == "selfevolve.queries" and (dl["partition"], dl["offset"]) == (0, 1)
    assert "cannot route poison" in dl["reason"] and dl["error_type"] == "ValueError" and dl["ts_ms"] == 1000
    assert r.states["router"] == 2  # the failed step changed nothing


def test_a_failing_responder_dead_letters_the_request():
    def flaky(req):
        if req["model"] == "a" and req["query_id"] == "q0":
            raise RuntimeError("no recording")
        return respond(req)

    r = driver.run(folds(), [("query", q) for q in queries("one", "two")], flaky)
    assert [a["query_id"] for a in r.of("answer")] == ["q1"]
    assert [d["source_topic"] for d in r.dead_letters] == ["selfevolve.inference-requests.replay"]


def test_windows_post_gold_only_after_the_window_is_answered():
    seen = []

    def gold(answer):
        seen.append(answer["query_id"])
        return [{"query_id": answer["query_id"], "tenant": "t", "model": m, "quality": 1.0, "ts_ms": answer["ts_ms"]}
                for m in answer["models_called"]]

    r = driver.replay(Driver(folds(), respond), queries("a", "b", "c"), gold, window=2)
    order = [(o.kind, o.record.get("query_id")) for o in r.log if o.kind in ("query", "answer", "feedback")]
    assert order == [("query", "q0"), ("query", "q1"), ("answer", "q0"), ("answer", "q0"), ("answer", "q1"),
                     ("answer", "q1"), ("feedback", "q0"), ("feedback", "q0"), ("feedback", "q1"),
                     ("feedback", "q1"), ("query", "q2"), ("answer", "q2"), ("answer", "q2"),
                     ("feedback", "q2"), ("feedback", "q2")]
    assert seen == ["q0", "q1", "q2"]
    hist = [(k, q) for k, q, _ in r.states["history"]]
    assert hist.index(("delivery", "q1")) < hist.index(("feedback", "q0"))


def test_same_inputs_same_records():
    a = driver.replay(Driver(folds(), respond), queries("a", "poison", "c"), None, window=1)
    b = driver.replay(Driver(folds(), respond), queries("a", "poison", "c"), None, window=1)
    assert a.records == b.records and a.log == b.log


def test_batches_go_to_step_many_with_the_same_outputs():
    one = driver.run(folds(), [("query", q) for q in queries("a", "b", "c")], respond)
    router = BatchRouter()
    many = driver.run(folds(router), [("query", q) for q in queries("a", "b", "c")], respond)
    assert router.batches == [3] and many.records == one.records


def test_a_failing_batch_is_stepped_one_by_one():
    router = BatchRouter()
    r = driver.run(folds(router), [("query", q) for q in queries("a", "poison", "c")], respond)
    assert router.batches == [3]  # it raised, then each query was stepped alone
    assert [a["query_id"] for a in r.of("answer")] == ["q0", "q2"] and len(r.dead_letters) == 1


def test_an_output_loop_is_stopped():
    class Loop:
        name = "loop"
        consumes = ("gap",)

        def initialize(self):
            return 0

        def step(self, state, event):
            return state, [Out("gap", event.record, None, "gaps")]

    d = Driver([Loop()], max_events=50)
    d.send("gap", {"domain": 1, "ts_ms": 0})
    with pytest.raises(DriverError, match="coming to rest"):
        d.run()


def test_rejects_unknown_kinds_and_duplicate_names():
    with pytest.raises(DriverError, match="not an event kind"):
        Driver(folds()).send("nope", {})
    with pytest.raises(DriverError, match="share a name"):
        Driver([History(), History()])


def test_given_states_are_kept():
    d = Driver(folds(), respond, states={"router": 40})
    d.send("query", queries("a")[0])
    assert d.run().states["router"] == 41


def test_history_records_are_queued_and_reach_the_router_then_the_history_fold():
    """Delivery and feedback records wait their turn in the FIFO (not applied on the spot), and each reaches
    every fold reading `history` in dataflow.GRAPH's order: router, then history."""
    graph = [n.name for n in dataflow.GRAPH]
    names = [f.name for f in folds() if f.name != "answers"]
    assert [n for n in graph if n in names] == names  # the fakes stand in GRAPH's order
    assert dataflow.consumers("history")[:2] == ["router", "history"]

    def gold(answer):
        return [{"query_id": answer["query_id"], "tenant": "t", "model": "a", "quality": 1.0, "ts_ms": 0}]

    r = driver.replay(Driver(folds(), respond), queries("a", "b"), gold, window=2)
    want = [("delivery", "q0"), ("delivery", "q1"), ("feedback", "q0"), ("feedback", "q1")]
    assert [s for s in SEEN if s[0] != "answers"] == [(fold, *w) for w in want for fold in ("router", "history")]
    assert [(o.record["event"], o.record["query_id"]) for o in r.log if o.kind == "history"] == want
    # Queued: the scorer sent q0's answer before its delivery, so the answer is read first (applied on the
    # spot, the delivery would overtake it).
    assert SEEN.index(("answers", "answer", "q0")) < SEEN.index(("router", "delivery", "q0"))
    assert [o.record["query_id"] for o in r.deliveries] == ["q0", "q1"]
    assert all(o.record["event"] == "delivery" for o in r.deliveries)


def test_a_history_record_a_fold_refuses_is_dead_lettered_once_and_the_other_reader_still_gets_it():
    class Picky(History):
        def step(self, state, event):
            if event.record["query_id"] == "q1":
                raise ValueError("bad vector")
            return super().step(state, event)

    r = driver.run([Router(), Scorer(), Feedback(), Picky(), Answers()], [("query", q) for q in queries("a", "b")],
                   respond)
    (dl,) = r.dead_letters
    assert dl["source_topic"] == "selfevolve.history" and "bad vector" in dl["reason"]
    assert [s for s in SEEN if s[2] == "q1" and s[0] != "answers"] == [("router", "delivery", "q1")]
    assert [q for _, q, _ in r.states["history"]] == ["q0"]
