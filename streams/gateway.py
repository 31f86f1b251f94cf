"""The OpenAI-compatible gateway: /v1/chat/completions and /v1/models onto the tenants' topics (FastAPI, uvicorn).

A request is authenticated by its API key (streams/gateway_keys.py: hashes on disk, a key names one tenant),
checked against the key's rate (a token bucket in this gateway) and day budget (spend folded from the answers
topics, the same in every gateway), and becomes a Query on queries.<tenant>. Its query id is derived from the
key and the client's `Idempotency-Key` header (a fresh one when there is none), so a retry names the same
query: it is answered from the answers already read, or waits for the first try's answer, and is sent again
only when this gateway neither has its answer nor waits on it (a first try whose gateway died before
sending). A query sent twice is answered once: the pipeline refuses a reused (tenant, query id) from another
record (selfevolve/flow/scorer.py) and dead-letters the second, while the first one's answer reaches every
waiting gateway. The gateway keeps no state of its own: kill it, start another, retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from selfevolve.config import Settings
from selfevolve.errors import BrokerError
from selfevolve.models.catalogue import Catalogue
from selfevolve.routing.pinning import PIN_KEY
from selfevolve.wire import openai_shapes as shapes
from selfevolve.wire.apikeys import KeyEntry, TokenBucket, query_id
from selfevolve.wire.openai_shapes import ApiError
from selfevolve.wire.tenancy import query_key
from streams.gateway_answers import AnswerBook
from streams.gateway_keys import KeyFile, keys_file

log = logging.getLogger("selfevolve.gateway")
MAX_IDEMPOTENCY_KEY = 255


class Gateway:
    """What the routes share: settings, catalogue names, the key file, rate buckets and the answer book."""

    def __init__(self, settings: Settings, book: AnswerBook | None = None) -> None:
        self.settings = settings
        self.models = tuple(s.name for s in Catalogue.load(settings.catalogue).models if not s.reserve)
        self.keys = KeyFile(keys_file(settings))
        self.book = book if book is not None else AnswerBook(settings)
        self.buckets: dict[str, TokenBucket] = {}

    def authenticate(self, request: Request) -> KeyEntry:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        table = self.keys.refresh()
        self.book.want_tenants(table.tenants())
        entry = table.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if entry is None:
            raise ApiError(401, "Incorrect API key provided. Create one with `selfevolve keys create TENANT`.",
                           code="invalid_api_key")
        return entry

    def admit(self, entry: KeyEntry, now_ms: int) -> None:
        """429 when the key is over its rate in this gateway or over its day's budget in every gateway."""
        rate = entry.rate_per_min if entry.rate_per_min is not None else self.settings.gateway_rate_per_min
        bucket = self.buckets.get(entry.key_hash)
        if bucket is None or bucket.rate_per_min != rate:
            bucket = self.buckets[entry.key_hash] = TokenBucket(rate)
        allowed, wait = bucket.take(now_ms)
        if not allowed:
            raise ApiError(429, f"Rate limit reached: {rate:g} requests per minute for this key. Try again in "
                                f"{wait:.1f} s.", type_="requests", code="rate_limit_exceeded")
        budget = entry.budget_usd_day if entry.budget_usd_day is not None else self.settings.gateway_budget_usd_day
        spent = self.book.ledger.today(entry.key_id, now_ms)
        if spent >= budget:
            raise ApiError(429, f"This key's budget of ${budget:g} per day (UTC) is spent (${spent:.6f}). It "
                                "resets at midnight UTC.", type_="insufficient_quota", code="insufficient_quota")

    async def answer(self, entry: KeyEntry, chat: shapes.ChatRequest, idem: str) -> tuple[dict, float | None]:
        """The Answer record of this request (one already read, or the one the query sent now gets), and the
        milliseconds from sending the query to reading its answer (None when this request sent nothing)."""
        tenant, qid = entry.tenant, query_id(entry.key_hash, idem)
        fut, sent_at = self.book.waiter(tenant, qid), None
        try:
            if not fut.done() and len(self.book.waiters.get(query_key(tenant, qid), [])) == 1:
                metadata = dict(chat.metadata)
                if chat.pinned:
                    metadata[PIN_KEY] = chat.pinned
                record = {"query_id": qid, "text": chat.text, "tenant": tenant, "metadata": metadata,
                          "ts_ms": int(time.time() * 1000)}
                if len(self.book.codec.encode("query", record)) > self.settings.max_record_bytes:
                    raise ApiError(413, "the request is over the record size limit", code="request_too_large")
                sent_at = time.perf_counter()
                await self.book.send("query", self.book.topics.queries_for(tenant), query_key(tenant, qid), record)
            answer = await asyncio.wait_for(asyncio.shield(fut), self.settings.gateway_timeout_s)
            return answer, None if sent_at is None else (time.perf_counter() - sent_at) * 1000
        except asyncio.TimeoutError:
            raise ApiError(504, f"No answer within {self.settings.gateway_timeout_s:g} s. Retry with the same "
                                f"Idempotency-Key to get this query's answer when it comes.", type_="timeout",
                           code="timeout") from None
        finally:
            self.book.forget(tenant, qid, fut)


class Counted:
    """Counts requests by route and status and times them (streams/metrics.py), as plain ASGI: cheaper than
    an http middleware, and it sees the status of error bodies and of streams alike."""

    ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/feedback")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.ROUTES:
            await self.app(scope, receive, send)
            return
        from streams.metrics import GATEWAY_REQUESTS, GATEWAY_SECONDS

        t0, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            GATEWAY_REQUESTS.labels(route=scope["path"], status=str(status[0])).inc()
            GATEWAY_SECONDS.labels(route=scope["path"]).observe(time.perf_counter() - t0)


def _error(e: ApiError) -> JSONResponse:
    headers = {"retry-after": "1"} if e.status == 429 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _json_body(request: Request, limit: int) -> object:
    """The request's JSON, 413 over `limit` bytes (by header first, then by what arrived), 400 if not JSON."""
    declared = request.headers.get("content-length")  # latin-1: "²" is a digit to isdigit(), not to int()
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is over the {limit}-byte limit", code="request_too_large")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the body is over the {limit}-byte limit", code="request_too_large")
    try:
        return json.loads(body)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:  # "[[[[..." under the size limit nests deeper than the parser recurses
        raise ApiError(400, "the body's JSON is nested too deeply") from None


def _idempotency_key(request: Request) -> str:
    idem = request.headers.get("idempotency-key")
    if idem is None:
        return uuid.uuid4().hex  # no retry can name this query again
    if not idem or len(idem) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return idem


def _sse(answer: dict, chat: shapes.ChatRequest, created: int):
    async def events():
        for chunk in shapes.chunks(answer, chat.text, created, chat.include_usage):
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"
    return events()


def create_app(settings: Settings, book: AnswerBook | None = None) -> FastAPI:
    """The gateway's app; `book` replaces its Kafka side (tests drive the app without a broker)."""
    gw = Gateway(settings, book)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.book.start(gw.keys.table.tenants())
        await gw.book.ready.wait()  # answers since the look-back are read before the first request
        yield
        await gw.book.stop()

    app = FastAPI(title="selfevolve gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    from streams.dashboard import mount_dashboard
    from streams.metrics import asgi_app

    mount_dashboard(app, settings)  # GET /dashboard and /dashboard/data: aggregates only, no key needed
    app.mount("/metrics", asgi_app())  # Prometheus text of this process
    app.add_middleware(Counted)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(Exception)
    async def any_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("gateway request failed")  # the trace goes to the log, never to the client
        return _error(ApiError(500, "The gateway failed on this request; it is logged.", type_="api_error",
                               code="internal_error"))

    @app.exception_handler(404)
    async def not_found(request: Request, e) -> JSONResponse:
        return _error(ApiError(404, f"Unknown path {request.url.path}", code="unknown_url"))

    @app.exception_handler(405)
    async def bad_method(request: Request, e) -> JSONResponse:
        return _error(ApiError(405, f"{request.method} is not allowed on {request.url.path}",
                               code="method_not_supported"))

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        gw.authenticate(request)
        return JSONResponse(shapes.models_list(gw.models, int(time.time())))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        entry = gw.authenticate(request)
        body = await _json_body(request, settings.gateway_max_body_bytes)
        chat = shapes.parse_chat(body, gw.models, settings.max_query_bytes)
        idem = _idempotency_key(request)
        if gw.book.known(entry.tenant, query_id(entry.key_hash, idem)) is None:  # a retry answered costs nothing
            gw.admit(entry, int(time.time() * 1000))
        answer, pipeline_ms = await gw.answer(entry, chat, idem)
        failed = shapes.no_answer_error(answer)
        if failed is not None:
            raise failed
        created, headers = int(answer["ts_ms"] // 1000), shapes.answer_headers(answer)
        if pipeline_ms is not None:  # the rest of the client's wait is the gateway's (and HTTP's) own
            own = (time.perf_counter() - t0) * 1000 - pipeline_ms  # in this handler, not waiting on the pipeline
            headers.update({"x-selfevolve-pipeline-ms": f"{pipeline_ms:.2f}", "x-selfevolve-gateway-ms": f"{own:.2f}"})
        if chat.stream:
            return StreamingResponse(_sse(answer, chat, created), media_type="text/event-stream", headers=headers)
        return JSONResponse(shapes.completion(answer, chat.text, created), headers=headers)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        """A verdict on an answer the key's tenant owns, sent to its feedback topic (the pipeline checks the
        ownership again: it accepts feedback.<T> only on T's answered queries)."""
        entry = gw.authenticate(request)
        qid, model, quality = shapes.parse_feedback(await _json_body(request, settings.gateway_max_body_bytes))
        answer = gw.book.known(entry.tenant, qid)
        if answer is None:
            raise ApiError(404, f"No answer {qid!r} of yours in the last {settings.gateway_lookback_s:g} s.",
                           code="answer_not_found", param="id")
        model = shapes.feedback_model(model, answer)
        record = {"query_id": qid, "tenant": entry.tenant, "model": model, "quality": quality,
                  "source": "user", "ts_ms": int(time.time() * 1000)}
        await gw.book.send("feedback", gw.book.topics.feedback_for(entry.tenant), query_key(entry.tenant, qid), record)
        return JSONResponse({"object": "feedback", "id": f"chatcmpl-{qid}", "model": model, "quality": quality,
                             "status": "accepted"})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": gw.book.ready.is_set(), "tenants": sorted(gw.book.tenants)})

    return app


def serve(settings: Settings) -> None:
    """Run one gateway until interrupted (`selfevolve gateway`)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, log_level="warning",
                access_log=False, proxy_headers=False, server_header=False)


@contextmanager
def background(settings: Settings, timeout_s: float = 60.0):
    """A gateway serving in a thread of this process until the block ends (tests, bench); yields its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.gateway_host,
                                           port=settings.gateway_port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.time() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            server.should_exit = True
            raise BrokerError(f"the gateway did not start within {timeout_s:g} s (see its log)")
        time.sleep(0.05)
    try:
        yield f"http://{settings.gateway_host}:{settings.gateway_port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
