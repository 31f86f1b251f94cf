"""Pure rules a query must pass before routing, and the parser for users' JSON query lines."""

from __future__ import annotations

import json
from typing import Any

from selfevolve.errors import ValidationError

DEFAULT_TENANT = "default"


def _text_bytes(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValidationError(f"query text is not valid UTF-8 ({e.reason} at character {e.start})") from e


def validate_query(record: dict, max_bytes: int) -> dict:
    """Return `record` unchanged if its id and text are usable and the text fits `max_bytes` of UTF-8."""
    query_id = record.get("query_id")
    if not isinstance(query_id, str) or not query_id.strip():
        raise ValidationError(f"query_id must be a non-empty string, got {query_id!r}")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValidationError(f"query {query_id} text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValidationError(f"query {query_id} text is empty")
    size = _text_bytes(text)
    if size > max_bytes:
        raise ValidationError(f"query text is {size} bytes, over the {max_bytes}-byte limit")
    return record


def _as_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    # JSON spelling, so True becomes "true" and a nested object stays readable and parseable.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def parse_query_line(line: str, now_ms: int) -> dict:
    """Turn one JSON line {id, text, tenant?, metadata?} into a Query record stamped `now_ms`.

    Other keys are ignored so dataset rows with extra columns can be sent as they are; `version` is left
    to the codec.
    """
    if not line.strip():
        raise ValidationError("query line is empty")
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ValidationError(f"query line is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValidationError(f"query line must be a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise ValidationError("query line is missing required field 'id'")
    if "text" not in obj:
        raise ValidationError("query line is missing required field 'text'")
    raw_id = obj["id"]
    # Dataset ids are often integers; booleans are JSON ints in Python but never a sensible id.
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise ValidationError(f"query line 'id' must be a string or an integer, got {json.dumps(raw_id)}")
    query_id = str(raw_id)
    if not query_id.strip():
        raise ValidationError("query line 'id' is empty")
    text = obj["text"]
    if not isinstance(text, str):
        raise ValidationError(f"query {query_id} 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValidationError(f"query {query_id} text is empty")
    _text_bytes(text)
    tenant = obj.get("tenant")
    if tenant is None:
        tenant = DEFAULT_TENANT
    elif not isinstance(tenant, str) or not tenant.strip():
        raise ValidationError(f"query {query_id} 'tenant' must be a non-empty string, got {json.dumps(tenant)}")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise ValidationError(f"query {query_id} 'metadata' must be a JSON object, got {type(metadata).__name__}")
    return {
        "query_id": query_id,
        "text": text,
        "tenant": tenant,
        "metadata": {str(k): _as_string(v) for k, v in metadata.items()},
        "ts_ms": int(now_ms),
    }
