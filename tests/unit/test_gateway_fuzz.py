"""Fuzzing the gateway without a broker: a hostile request gets an OpenAI 4xx body, never a 5xx nor a record."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, example, given, settings as hsettings, strategies as st
from starlette.testclient import TestClient

from selfevolve.config import Settings
from selfevolve.routing.pinning import PIN_KEY
from selfevolve.wire.apikeys import hash_key, query_id
from selfevolve.wire.openai_shapes import AUTO_MODEL, COUNTS, MAX_METADATA, RANGES, ROLES
from streams.gateway import MAX_IDEMPOTENCY_KEY, create_app
from streams.gateway_keys import create_key, revoke_key

from gateway_edge import CHAT, FEEDBACK, MODELS, TENANT, Edge, FakeBook, assert_refused, encode, hi  # noqa: E402

BODY_LIMIT, TEXT_LIMIT = 16 * 1024, 4 * 1024  # small limits keep oversize cases cheap
KNOWN = {"model", "messages", "n", "stream", "stream_options", "metadata", *RANGES, *COUNTS}
# Bounded for two cores; derandomized so a run is repeatable; no example database written into the checkout.
FUZZ = hsettings(deadline=None, max_examples=300, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("gwfuzz"), gateway_rate_per_min=1e9,
                        gateway_max_body_bytes=BODY_LIMIT, max_query_bytes=TEXT_LIMIT)
    keys = {who: create_key(settings, TENANT[who])[0] for who in ("acme", "acme2", "beta", "revoked")}
    revoke_key(settings, hash_key(keys["revoked"])[:12])
    keys["unknown"] = "sk-se-" + "Z" * 43  # well formed, never created
    book = FakeBook(settings)
    with TestClient(create_app(settings, book), raise_server_exceptions=False) as client:
        e = Edge(client, book, keys)
        for who in ("acme", "beta"):  # one answer per tenant, for feedback
            reply = e.ask(who)
            e.answers[who] = (reply.headers["x-selfevolve-query-id"], json.loads(reply.body)["model"])
        yield e


# ---- what a hostile client sends ----
SURROGATE = st.characters(categories=["Cs"])  # one: two would be a valid pair once decoded
TEXT = st.text(max_size=30)
LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**20, max_value=10**80).map(
    lambda n: n if n % 2 else -n), st.floats(), TEXT, st.sampled_from(
    ["NaN", "Infinity", "-0", "1e999", "\x00", "../../etc/passwd", "selfevolve/../auto", AUTO_MODEL.upper()]))
ANY = st.recursive(LEAF, lambda kid: st.lists(kid, max_size=4) | st.dictionaries(TEXT, kid, max_size=4),
                   max_leaves=12)
HOSTILE_TEXT = TEXT | st.builds(lambda a, s, b: a + s + b, TEXT, SURROGATE, TEXT)
CHATTY = st.fixed_dictionaries({}, optional={  # an object with chat keys of any shape: reaches deeper checks
    "model": ANY | st.sampled_from((AUTO_MODEL, *MODELS)), "stream": ANY, "n": ANY, "metadata": ANY,
    "messages": ANY | st.lists(st.fixed_dictionaries({}, optional={"role": ANY | st.sampled_from(ROLES),
                                                                    "content": ANY | HOSTILE_TEXT}), max_size=3)})
WORDS = st.text(min_size=1, max_size=40).filter(str.strip)
CONTENT = WORDS | st.lists(WORDS.map(lambda t: {"type": "text", "text": t}), min_size=1, max_size=3)
NOT_BOOL = ANY.filter(lambda v: v is not None and not isinstance(v, bool))


def message(role) -> st.SearchStrategy:
    return st.fixed_dictionaries({"role": role, "content": CONTENT}, optional={"name": WORDS})


@st.composite
def valid_chat(draw) -> dict:
    body = {"messages": draw(st.lists(message(st.sampled_from(ROLES)), max_size=3)) + [draw(message(st.just("user")))]}
    opt = {"model": st.sampled_from((AUTO_MODEL, *MODELS)), "stream": st.booleans() | st.none(), "n": st.just(1),
           "stream_options": st.none() | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
           "metadata": st.dictionaries(st.text(max_size=64).filter(lambda k: k != PIN_KEY), st.text(max_size=99),
                                       max_size=MAX_METADATA),
           **{k: st.integers(1, 10**9) for k in COUNTS}, **{k: st.floats(lo, hi) for k, (lo, hi) in RANGES.items()}}
    for k in draw(st.sets(st.sampled_from(sorted(opt)))):
        body[k] = draw(opt[k])
    for k, v in draw(st.dictionaries(TEXT.filter(lambda k: k not in KNOWN), ANY, max_size=2)).items():
        body[k] = v  # fields the gateway does not know are ignored, as OpenAI clients add their own
    return body


def put(field: str, values: st.SearchStrategy):
    """A fault: the body with `field` set to a drawn value."""
    return lambda draw, body: {**body, field: draw(values)}


def put_msg(field: str, values: st.SearchStrategy, last: bool = False):
    """A fault: one message (the last, or any) with `field` set to a drawn value, or removed for None."""
    def fault(draw, body):
        msgs = [dict(m) for m in body["messages"]]
        m = msgs[-1] if last else msgs[draw(st.integers(0, len(msgs) - 1))]
        value = draw(values)
        m.pop(field) if value is None else m.update({field: value})
        return {**body, "messages": msgs}
    return fault


TEXT_PART = lambda p: isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)  # noqa: E731
NON_USER = st.sampled_from([r for r in ROLES if r != "user"])
MUTATIONS = {  # name: (the body with one fault, the status it must get)
    "not_object": (lambda draw, body: draw(ANY.filter(lambda v: not isinstance(v, dict))), 400),
    "no_messages": (lambda draw, body: {k: v for k, v in body.items() if k != "messages"}, 400),
    "messages_type": (put("messages", ANY.filter(lambda v: not isinstance(v, list)) | st.just([])), 400),
    "message_type": (lambda draw, body: {**body, "messages": [draw(ANY.filter(lambda v: not isinstance(v, dict))),
                                                              *body["messages"]]}, 400),
    "bad_role": (put_msg("role", ANY.filter(lambda r: r not in ROLES) | st.none()), 400),
    "last_not_user": (put_msg("role", NON_USER, last=True), 400),
    "content_type": (put_msg("content", ANY.filter(lambda v: not isinstance(v, (str, list)))), 400),
    "content_part": (put_msg("content", ANY.filter(lambda p: not TEXT_PART(p)).map(lambda p: [{"type": "text",
                                                                                             "text": "x"}, p])), 400),
    "surrogate": (put_msg("content", st.builds(str.__add__, TEXT, SURROGATE)), 400),
    "blank": (lambda draw, body: {**body, "messages": [{"role": "user", "content": draw(st.text(" \t\n\r"))}]}, 400),
    "too_long": (put_msg("content", st.integers(TEXT_LIMIT + 1, 2 * BODY_LIMIT).map(lambda n: "x" * n)), 413),
    "model_type": (put("model", ANY.filter(lambda m: not isinstance(m, str)) | st.just("")), 400),
    "model_unknown": (put("model", HOSTILE_TEXT.filter(lambda m: m and m not in (AUTO_MODEL, *MODELS))), 404),
    "n": (put("n", ANY.filter(lambda v: v is not None and (isinstance(v, bool) or v != 1))), 400),
    "stream": (put("stream", NOT_BOOL), 400),
    "stream_options": (put("stream_options", NOT_BOOL.filter(lambda v: not isinstance(v, dict))), 400),
    "include_usage": (put("stream_options", NOT_BOOL.map(lambda v: {"include_usage": v})), 400),
    "out_of_range": (lambda draw, body: {**body, draw(st.sampled_from(sorted(RANGES))): draw(
        st.floats(2.0001, 1e300) | st.floats(-1e300, -2.0001) | st.booleans() | TEXT | st.just(float("nan")))}, 400),
    "count": (lambda draw, body: {**body, draw(st.sampled_from(COUNTS)): draw(
        st.integers(max_value=0) | st.floats(0.5, 1e9) | st.booleans() | TEXT)}, 400),
    "metadata": (put("metadata", st.sampled_from([
        [], "x", {"k": 1}, {"k" * 65: "v"}, {"k": "v" * 513}, {PIN_KEY: MODELS[0]}, {"k": "\ud800"},
        {f"k{i}": "v" for i in range(MAX_METADATA + 1)}])), 400),
}
RAW = st.binary(max_size=200) | st.sampled_from([b"", b"[" * 5000, b'{"messages":' * 3000, b"9" * 5000, b"\xff\xfe{",
                                                 b"{}" * 9, b"nul", b"\x00" * 64, encode(hi("\ud800"), False)])


@st.composite
def chat_case(draw, name: str | None = "any") -> tuple:
    """(body, ascii escapes?, status, fault name) of a valid body with the fault `name` (None, or "any" drawn)."""
    body = draw(valid_chat())
    name = draw(st.sampled_from([None, *MUTATIONS])) if name == "any" else name
    if name is None:
        return body, draw(st.booleans()), 200, None
    fault, status = MUTATIONS[name]
    return fault(draw, body), draw(st.booleans()), status, name


KEYED = ("acme", "acme2", "beta")
SIGNS_IN = st.tuples(st.sampled_from([b"Bearer %KEY%", b"bearer %KEY%", b"BEARER   %KEY%  "]), st.sampled_from(KEYED),
                     st.just(True))
AUTH = st.sampled_from([  # (Authorization template, whose key fills %KEY%, whether it signs in); half sign in
    SIGNS_IN, SIGNS_IN, SIGNS_IN,
    st.tuples(st.just(b"Bearer %KEY%"), st.sampled_from(["revoked", "unknown"]), st.just(False)),
    st.tuples(st.sampled_from([b"Basic %KEY%", b"Bearer%KEY%", b"Bearer\t%KEY%", b"%KEY%", b"Bearer %KEY%x",
                               b"Bearer x%KEY%", b"Bearer", b""]), st.sampled_from(KEYED), st.just(False)),
    st.tuples(st.none() | st.binary(max_size=80) | st.binary(max_size=60).map(b"Bearer sk-se-".__add__),
              st.just("acme"), st.just(False))]).flatmap(lambda auth: auth)
IDEM = st.sampled_from([  # k1 and k2 are sent with every key: the same header must never reach another key's query
    st.none(), st.sampled_from([b"k1", b"k2"]), st.binary(min_size=1, max_size=MAX_IDEMPOTENCY_KEY),
    st.binary(min_size=MAX_IDEMPOTENCY_KEY + 1, max_size=600), st.just(b"")]).flatmap(lambda s: s)
CLEN = st.one_of(st.sampled_from([b"=", b"=", b"=", None, None]), st.sampled_from([b"\xb2", b"-1", b"1e3", b" 5",
                 b"0x10", b"9" * 30]), st.integers(0, 2 * BODY_LIMIT).map(lambda n: str(n).encode()),
                 st.binary(max_size=12))  # b"=": the true length
CTYPE = st.none() | st.sampled_from([b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; x"])


@FUZZ
@given(path=st.sampled_from([CHAT, FEEDBACK]), doc=ANY | CHATTY, raw=st.none() | RAW, ascii_=st.booleans())
@example(path=CHAT, doc=None, raw=b"[" * 5000, ascii_=True)  # was a 500: RecursionError out of json.loads
@example(path=FEEDBACK, doc=None, raw=b'{"a":' * 3000, ascii_=True)  # the same on /v1/feedback
def test_any_json_or_bytes_gets_an_answer_or_a_clean_refusal(edge, path, doc, raw, ascii_):
    reply = edge.post(path, "acme", encode(doc, ascii_) if raw is None else raw)
    event(f"{path} {reply.status}")
    if reply.status == 200 and path == CHAT:  # an object that happens to be a valid request
        edge.answered(reply, "acme", retry=False)
    else:
        assert_refused(reply)
    edge.ask("acme")


def check_chat(edge: Edge, case: tuple, who: str) -> None:
    doc, ascii_, status, name = case
    body = encode(doc, ascii_)
    status = 413 if len(body) > BODY_LIMIT else status  # the size is checked before the JSON is read
    reply = edge.post(CHAT, who, body)
    event(f"{status} {name}")
    if status == 200:
        edge.answered(reply, TENANT[who], retry=False)
    else:
        assert_refused(reply, status)
    edge.ask(who)


@hsettings(FUZZ, max_examples=100)
@given(case=chat_case(), who=st.sampled_from(KEYED))
# Were 500s: a lone surrogate in the text or metadata failed the query record's encoding, in a model the 404's body.
@example(case=(hi("hi\ud800"), True, 400, "surrogate"), who="acme")
@example(case=(hi(metadata={"k": "\ud800"}), False, 400, "metadata"), who="beta")
@example(case=(hi(model="\udfff"), True, 404, "model_unknown"), who="acme")
# Were 200s with a query sent: wrong-typed or out-of-range options passed (a falsy stream_options as {}).
@example(case=(hi(n=True), True, 400, "n"), who="acme")
@example(case=(hi(temperature=9), True, 400, "out_of_range"), who="acme")
@example(case=(hi(stream_options=[]), True, 400, "stream_options"), who="acme")
@example(case=(hi(stream=True, stream_options={"include_usage": "no"}), True, 400, "include_usage"), who="acme")
@example(case=(hi(stream=None), True, 200, None), who="acme")  # was a 400: OpenAI's null is the default
def test_a_chat_body_with_one_fault_gets_its_status_and_sends_nothing(edge, case, who):
    check_chat(edge, case, who)


@pytest.mark.parametrize("name", [None, *MUTATIONS])
@hsettings(FUZZ, max_examples=20)
@given(data=st.data(), who=st.sampled_from(KEYED))
def test_every_chat_fault(edge, name, data, who):
    """Each fault in turn: drawn at random, Hypothesis would try the first few far more than the others."""
    check_chat(edge, data.draw(chat_case(name)), who)


@FUZZ
@given(auth=AUTH, idem=IDEM, ctype=CTYPE | st.binary(max_size=30), clen=CLEN, chunks=st.integers(1, 4),
       oversize=st.sampled_from([False] * 5 + [True]), body=valid_chat())
@example(auth=(b"Bearer %KEY%", "acme", True), idem=None, ctype=None, clen=b"\xb2", oversize=False, chunks=1,
         body={"messages": [{"role": "user", "content": "hi"}]})  # was a 500: "²".isdigit() but int("²") fails
def test_hostile_headers_are_refused_and_keys_never_cross_tenants(edge, auth, idem, ctype, clen, oversize, chunks,
                                                                  body):
    template, who, signs_in = auth
    raw = encode(body) + (b" " * (BODY_LIMIT + 1) if oversize else b"")
    declared = str(len(raw)).encode() if clen == b"=" else clen
    headers = [(name, value) for name, value in ((b"content-type", ctype), (b"content-length", declared),
               (b"idempotency-key", idem)) if value is not None]
    if template is not None:
        headers.append((b"authorization", template.replace(b"%KEY%", edge.keys[who].encode())))
    tenant, qid = TENANT[who], None
    if idem is not None and signs_in:
        qid = query_id(hash_key(edge.keys[who]), idem.decode("latin-1"))  # idempotency keys are per API key
    retry = qid is not None and edge.book.known(tenant, qid) is not None
    reply = edge.call(CHAT, headers, raw, chunks=chunks)
    event(f"{reply.status} retry={retry}")
    if not signs_in:
        assert_refused(reply, 401)
    elif len(raw) > BODY_LIMIT or (declared is not None and declared.isdigit() and int(declared) > BODY_LIMIT):
        assert_refused(reply, 413)
    elif idem is not None and not 1 <= len(idem) <= MAX_IDEMPOTENCY_KEY:
        assert_refused(reply, 400)
    else:
        edge.answered(reply, tenant, retry)
        assert qid is None or reply.headers["x-selfevolve-query-id"] == qid
    edge.ask("acme")


@st.composite
def feedback_case(draw) -> tuple[dict, int]:
    """(a feedback body, its status), with @-placeholders for acme's answer (@own), beta's (@other) and the model
    that answered (@model). Up to three faults; the first found wins: the id's type, the model's type, the
    quality, then whose answer it is (404 before any check that would tell about another tenant's answer)."""
    id_fault, model_fault, bad_quality = (draw(st.sampled_from(choices)) for choices in (
        [None, None, None, "type", "other", "random"], [None, None, None, "type", "unknown"], [False, False, True]))
    ident = draw({None: st.sampled_from(["@own", "@own-bare"]), "other": st.sampled_from(["@other", "@other-bare"]),
                  "type": ANY.filter(lambda v: not isinstance(v, str)) | st.just(""),
                  "random": TEXT.filter(lambda t: t and not t.startswith("@"))}[id_fault])
    quality = draw(st.floats(1.0001, 1e300) | st.floats(-1e300, -1e-9) | st.sampled_from(
        [float("nan"), float("inf"), True, False, None, "1", [1]]) if bad_quality else st.floats(0, 1) | st.just(1))
    model = draw({None: st.sampled_from([None, "@model"]),
                  "type": ANY.filter(lambda v: v is not None and not isinstance(v, str)) | st.just(""),
                  "unknown": HOSTILE_TEXT.filter(lambda m: m not in ("", "@model", MODELS[0]))}[model_fault])
    body = {draw(st.sampled_from(["id", "query_id"])): ident, "quality": quality, "model": model}
    body = {k: v for k, v in body.items() if v is not None or draw(st.booleans())}  # null or absent alike
    body.update(draw(st.dictionaries(TEXT.filter(lambda k: k not in ("id", "query_id", "quality", "model")), ANY,
                                     max_size=2)))
    if "type" in (id_fault, model_fault) or bad_quality:
        return body, 400
    return body, 404 if id_fault else 400 if model_fault else 200


@FUZZ
@given(case=feedback_case(), who=st.sampled_from(["acme", "acme2"]), ascii_=st.booleans())
@example(case=({"id": "@own", "quality": 1, "model": "nope"}, 400), who="acme", ascii_=True)  # was a 200 and a record
@example(case=({"id": "@own", "quality": 1, "model": "\ud800"}, 400), who="acme", ascii_=True)  # was a 500
@example(case=({"id": "@other", "quality": 0.5}, 404), who="acme", ascii_=True)  # another tenant's answer
def test_feedback_is_accepted_only_on_the_tenants_own_answers(edge, case, who, ascii_):
    doc, status = case
    (own, model), (other, _) = edge.answers["acme"], edge.answers["beta"]
    names = {"@own": f"chatcmpl-{own}", "@own-bare": own, "@other": f"chatcmpl-{other}", "@other-bare": other,
             "@model": model}
    doc = {k: names.get(v, v) if isinstance(v, str) else v for k, v in doc.items()}
    reply = edge.post(FEEDBACK, who, encode(doc, ascii_))
    event(str(status))
    if status != 200:
        assert_refused(reply, status)
        assert b"answer for beta" not in reply.body  # nothing of beta's answer, whatever the error says
    else:
        assert reply.crash is None and reply.status == 200, (reply.status, reply.body[:300])
        [(kind, topic, record)] = reply.sent
        assert (kind, topic, record["tenant"], record["query_id"], record["model"]) == (
            "feedback", edge.book.topics.feedback_for("acme"), "acme", own, model)
    edge.ask(who)


@pytest.mark.parametrize("method,path,status", [("GET", CHAT, 405), ("PUT", FEEDBACK, 405), ("POST", "/v1/x", 404),
                                                ("GET", "/v1/../v1/models", 404), ("GET", "/v1/models", 401)])
def test_unknown_paths_and_methods_are_openai_errors(edge, method, path, status):
    assert_refused(edge.call(path, [(b"authorization", b"Bearer nope")], method=method), status)
