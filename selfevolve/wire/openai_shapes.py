"""OpenAI's chat-completions wire shapes, pure: a request checked into a query, an answer into a response or chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfevolve.errors import ValidationError
from selfevolve.flow.responders import estimate_tokens
from selfevolve.routing.pinning import PIN_KEY  # the query metadata key that pins a model

AUTO_MODEL = "selfevolve/auto"
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_METADATA = 16  # OpenAI's own limit on a request's metadata pairs
MAX_METADATA_CHARS = 512
# Sampling options the pipeline does not use, checked as OpenAI checks them: a client must not believe an
# out-of-range value was taken. None is absent (some SDKs send null for an unset option).
RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
          "frequency_penalty": (-2.0, 2.0)}
COUNTS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class ChatRequest:
    """What the gateway needs of a chat-completions body: the query's text, a pinned model (or None), the
    client's metadata, and whether to stream."""

    model: str
    text: str
    pinned: str | None
    stream: bool
    include_usage: bool
    metadata: dict[str, str] = field(default_factory=dict)


class ApiError(ValidationError):
    """An error with its HTTP status and OpenAI error type/code, shown to the client as OpenAI shows one."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict:
        return error_body(str(self), self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    # Messages quote the client's input; a lone surrogate in it has no UTF-8 form and would fail the response.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _unicode(text: str, what: str, param: str) -> str:
    """text, or 400 when it holds a lone surrogate (valid in a JSON escape, not in UTF-8 nor in the records)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{what} is not valid Unicode (a lone surrogate)", param=param) from None
    return text


def _content_text(content: Any, i: int) -> str:
    """A message's content: a string, or a list of text parts (images and audio are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")


def messages_text(messages: Any) -> str:
    """The query text of a conversation: a lone user message is its content as it is (so a recorded prompt
    is found as recorded); otherwise each message as `role: content`, in order, the last one last."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role, one of {', '.join(ROLES)}", param="messages")
        turns.append((m["role"], _content_text(m.get("content"), i)))
    if turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{role}: {text}" for role, text in turns)


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_METADATA:
        raise ApiError(400, f"'metadata' must be an object of at most {MAX_METADATA} string pairs", param="metadata")
    out = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > MAX_METADATA_CHARS:
            raise ApiError(400, "'metadata' keys must be strings of at most 64 characters and values strings "
                                f"of at most {MAX_METADATA_CHARS}", param="metadata")
        _unicode(k + v, "'metadata'", "metadata")
        if k == PIN_KEY:
            raise ApiError(400, f"metadata key {PIN_KEY!r} is reserved: name the model in 'model'", param="metadata")
        out[k] = v
    return out


def parse_chat(body: Any, models: tuple[str, ...], max_text_bytes: int) -> ChatRequest:
    """The ChatRequest of a decoded JSON body; ApiError 400 (malformed), 404 (unknown model) or 413 (too long)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    model = body.get("model", AUTO_MODEL)
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a string", param="model")
    if model != AUTO_MODEL and model not in models:
        raise ApiError(404, f"The model '{model}' does not exist: use {AUTO_MODEL} or one of GET /v1/models",
                       code="model_not_found", param="model")
    stream, include_usage = _options(body)
    text = messages_text(body.get("messages"))
    if not text.strip():
        raise ApiError(400, "the conversation has no text", param="messages")
    size = len(_unicode(text, "the conversation", "messages").encode("utf-8"))
    if size > max_text_bytes:
        raise ApiError(413, f"the conversation is {size} bytes, over the {max_text_bytes}-byte limit",
                       code="request_too_large", param="messages")
    return ChatRequest(model, text, None if model == AUTO_MODEL else model, stream, include_usage,
                       _metadata(body.get("metadata")))


def _options(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) of a body whose other options are in range; 400 naming the first that is not."""
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    opts = body.get("stream_options")
    opts = {} if opts is None else opts
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    usage_ = opts.get("include_usage")
    if usage_ is not None and not isinstance(usage_, bool):
        raise ApiError(400, "'stream_options.include_usage' must be a boolean", param="stream_options")
    for name, (lo, hi) in RANGES.items():
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
            raise ApiError(400, f"'{name}' must be a number from {lo:g} to {hi:g}", param=name)
    for name in COUNTS:
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ApiError(400, f"'{name}' must be an integer of at least 1", param=name)
    return bool(stream), bool(usage_)


def usage(prompt: str, answer: str) -> dict:
    """Token counts by the project's one estimate (about 4 characters a token): the backends' too."""
    p, c = estimate_tokens(prompt), estimate_tokens(answer)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(answer: dict, prompt: str, created_s: int) -> dict:
    """The chat.completion object of an Answer record."""
    return {
        "id": f"chatcmpl-{answer['query_id']}", "object": "chat.completion", "created": created_s,
        "model": answer["model"], "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["answer"], "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(prompt, answer["answer"]),
    }


def chunks(answer: dict, prompt: str, created_s: int, include_usage: bool, piece_chars: int = 64) -> list[dict]:
    """The chat.completion.chunk objects of an Answer record: the role, the text in pieces, the stop, and the
    usage chunk when asked for (stream_options.include_usage). The answer is whole when it arrives (the scorer
    picks a winner among finished calls), so the pieces only keep OpenAI's stream shape."""
    base = {"id": f"chatcmpl-{answer['query_id']}", "object": "chat.completion.chunk", "created": created_s,
            "model": answer["model"], "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    text = answer["answer"]
    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": text[i:i + piece_chars]}, None) for i in range(0, len(text), piece_chars)]
    out.append(chunk({}, "stop"))
    if include_usage:
        out.append({**base, "choices": [], "usage": usage(prompt, text)})
    return out


def answer_headers(answer: dict) -> dict[str, str]:
    """Response headers naming who answered, how it was routed, and what it cost."""
    return {"x-selfevolve-model": answer["model"], "x-selfevolve-strategy": answer["strategy"],
            "x-selfevolve-cost-usd": f"{float(answer['cost_usd']):.8f}",
            "x-selfevolve-query-id": answer["query_id"]}


def no_answer_error(answer: dict) -> ApiError | None:
    """A 502 when every model called failed (an answer with no model), else None."""
    if answer["model"]:
        return None
    called = ", ".join(answer.get("models_called") or []) or "none"
    return ApiError(502, f"no model answered (called: {called})", type_="api_error", code="upstream_failed")


def models_list(models: tuple[str, ...], created_s: int) -> dict:
    names = (AUTO_MODEL, *models)
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": created_s, "owned_by": "selfevolve"} for n in names]}


def parse_feedback(body: Any) -> tuple[str, str | None, float]:
    """(completion or query id, model or None, quality) of a POST /v1/feedback body."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    ident = body.get("id", body.get("query_id"))
    if not isinstance(ident, str) or not ident:
        raise ApiError(400, "'id' (the chat completion's id) is required", param="id")
    qid = ident[len("chatcmpl-"):] if ident.startswith("chatcmpl-") else ident
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ApiError(400, "'model' must be a string", param="model")
    quality = body.get("quality")
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 0.0 <= quality <= 1.0:
        raise ApiError(400, "'quality' must be a number from 0 to 1", param="quality")
    return qid, model, float(quality)


def feedback_model(model: str | None, answer: dict) -> str:
    """The model a verdict is about: the one that answered by default, else one the query called (the pipeline
    learns nothing from a verdict on a model that was not called, so it is refused here, before it is sent)."""
    if model is None:
        return answer["model"]
    if model != answer["model"] and model not in (answer.get("models_called") or ()):
        raise ApiError(400, f"model {model[:100]!r} was not called for this query", param="model")
    return model
