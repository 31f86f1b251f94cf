"""The gateway in-process for its fuzz test: the real app over a Kafka-less AnswerBook, driven by raw ASGI."""

from __future__ import annotations

import asyncio
import json
from collections import namedtuple

from starlette.testclient import TestClient

from selfevolve.config import Settings
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.pinning import PIN_KEY
from selfevolve.wire.openai_shapes import AUTO_MODEL
from streams.gateway_answers import AnswerBook

CHAT, FEEDBACK = "/v1/chat/completions", "/v1/feedback"
MODELS = tuple(s.name for s in Catalogue.load(Settings().catalogue).models if not s.reserve)
TENANT = {"acme": "acme", "acme2": "acme", "beta": "beta", "revoked": "acme", "unknown": "acme"}  # by key name

class FakeBook(AnswerBook):
    """The AnswerBook with Kafka cut off: what it sends is kept in `produced`, and a query is answered at once
    through `_take`, the decode path of an answer read from answers.<T>."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.produced: list[tuple[str, str, dict]] = []

    async def start(self, tenants: list[str]) -> None:
        self.tenants |= set(tenants)
        self.ready.set()

    async def send(self, kind: str, topic: str, key: str, record: dict) -> None:
        self.codec.encode(kind, record)  # as the real send: a record that does not encode never leaves
        self.produced.append((kind, topic, record))
        if kind == "query":
            model = record["metadata"].get(PIN_KEY, MODELS[0])
            self._take(self.codec.encode("answer", {
                "query_id": record["query_id"], "tenant": record["tenant"], "model": model,
                "answer": f"answer for {record['tenant']}", "composite": 1.0, "cost_usd": 0.0,
                "strategy": "targeted", "models_called": [model], "latency_ms": 1.0, "ts_ms": record["ts_ms"]}))


# crash: what escaped the app, if anything; sent: the records the request produced
Reply = namedtuple("Reply", "status headers body crash sent")


class Edge:
    """The real app in-process. Requests go in as raw ASGI messages, not through an HTTP client, so hostile
    header bytes and lying Content-Lengths reach the app unnormalised (a client library would fix them)."""

    def __init__(self, client: TestClient, book: FakeBook, keys: dict[str, str]) -> None:
        self.client, self.book, self.keys, self.answers, self.fresh = client, book, keys, {}, 0

    async def _asgi(self, method: str, path: str, headers: list, body: bytes, chunks: int) -> tuple:
        size = max(1, -(-len(body) // chunks))
        parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        inbox = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
        out, done = [], asyncio.Event()

        async def receive():
            if inbox:
                return inbox.pop(0)
            await done.wait()  # a client that stays until the response ends (a stream watches for disconnect)
            return {"type": "http.disconnect"}

        async def send(message):
            out.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {}}
        try:
            await self.client.app(scope, receive, send)
        except Exception as e:  # noqa: BLE001 - whatever escapes is the finding
            return out, repr(e)
        return out, None

    def call(self, path: str, headers: list, body: bytes = b"", method: str = "POST", chunks: int = 1) -> Reply:
        before = len(self.book.produced)
        out, crash = self.client.portal.call(self._asgi, method, path, headers, body, chunks)
        start = next((m for m in out if m["type"] == "http.response.start"), {"status": 500, "headers": []})
        hdrs = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
        data = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
        return Reply(start["status"], hdrs, data, crash, self.book.produced[before:])

    def post(self, path: str, who: str, body: bytes, idem: bytes | None = None) -> Reply:
        headers = [(b"authorization", f"Bearer {self.keys[who]}".encode()), (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        return self.call(path, headers + ([(b"idempotency-key", idem)] if idem is not None else []), body)

    def ask(self, who: str) -> Reply:
        """A valid chat request under a fresh idempotency key: it must be answered, and sent once."""
        self.fresh += 1
        reply = self.post(CHAT, who, encode(hi("What is 2+2?", model=AUTO_MODEL)), f"fresh-{self.fresh}".encode())
        self.answered(reply, TENANT[who], retry=False)
        return reply

    def answered(self, reply: Reply, tenant: str, retry: bool) -> None:
        """200 with this tenant's answer (never another's), and one query sent to its topic unless a retry."""
        assert reply.crash is None and reply.status == 200, (reply.status, reply.crash, reply.body[:300])
        qid = reply.headers["x-selfevolve-query-id"]
        assert f"answer for {tenant}".encode() in reply.body
        if retry:
            assert reply.sent == []
        else:
            [(kind, topic, record)] = reply.sent
            assert (kind, record["tenant"], record["query_id"]) == ("query", tenant, qid)
            assert topic == self.book.topics.queries_for(tenant)


def assert_refused(reply: Reply, status: int | None = None) -> None:
    """An OpenAI error body with a 4xx status (`status` if given), and nothing produced."""
    assert reply.crash is None and reply.status < 500, (reply.status, reply.crash, reply.body[:300])
    assert 400 <= reply.status < 500 and (status is None or reply.status == status), (reply.status, reply.body[:300])
    err = json.loads(reply.body)["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert {"param", "code"} <= set(err) and "Traceback" not in err["message"]
    assert reply.sent == [], reply.sent


def encode(doc, ascii_: bool = True) -> bytes:
    """JSON bytes as a client might send them: NaN tokens allowed, lone surrogates as escapes or raw bytes
    (json.loads decodes bytes with surrogatepass, so both reach the gateway's checks)."""
    return json.dumps(doc, ensure_ascii=ascii_, allow_nan=True).encode("utf-8", "surrogatepass")


def hi(text: str = "hi", **fields) -> dict:
    return {"messages": [{"role": "user", "content": text}], **fields}
