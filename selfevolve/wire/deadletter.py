"""Pure builder of DeadLetter records: a bounded prefix of the failed event's bytes, where it came from, and why."""

from __future__ import annotations

import hashlib

# A reason is for people and dashboards; error text can embed whole payloads, which the record already has.
MAX_REASON_CHARS = 2000
# Default prefix of the original bytes a dead letter keeps (Settings.dead_letter_payload_bytes): a dead
# letter of a record at the broker's size limit must itself fit under that limit.
PAYLOAD_PREFIX_BYTES = 4096
_MAX_CAUSES = 5


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _causes(error: BaseException) -> list[BaseException]:
    """The explicit `raise ... from` chain, or the implicit context unless it was suppressed."""
    chain: list[BaseException] = []
    seen = {id(error)}
    cur: BaseException | None = error
    while cur is not None and len(chain) < _MAX_CAUSES:
        cur = cur.__cause__ if cur.__cause__ is not None else (None if cur.__suppress_context__ else cur.__context__)
        if cur is None or id(cur) in seen:
            break
        seen.add(id(cur))
        chain.append(cur)
    return chain


def reason_for(error: BaseException) -> str:
    """`str(error)` followed by each chained cause whose text it does not already contain."""
    reason = _describe(error)
    for cause in _causes(error):
        text = _describe(cause)
        if text not in reason:
            reason += f" (caused by {type(cause).__name__}: {text})"
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason


def dead_letter(
    source_topic: str,
    partition: int,
    offset: int,
    payload: bytes | bytearray | memoryview | None,
    error: BaseException,
    now_ms: int,
    max_payload: int = PAYLOAD_PREFIX_BYTES,
) -> dict:
    """A DeadLetter record (without `version`, which the codec stamps) for one failed event: the first
    `max_payload` bytes of the value, with the whole value's length and SHA-256 to identify it."""
    # Kafka tombstones carry no value; keep the record encodable rather than failing the failure path.
    data = b"" if payload is None else bytes(payload)
    return {
        "source_topic": source_topic,
        "partition": int(partition),
        "offset": int(offset),
        "reason": reason_for(error),
        "error_type": type(error).__name__,
        "payload": data[: max(0, int(max_payload))],
        "payload_len": len(data),
        "payload_sha256": hashlib.sha256(data).hexdigest(),
        "ts_ms": int(now_ms),
    }
