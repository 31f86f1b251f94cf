"""User-facing producers and readers: JSON-lines queries in, answers out."""

from __future__ import annotations

import json
import time
from typing import Iterable

from selfevolve.codec import Codec
from selfevolve.config import Settings
from selfevolve.errors import ValidationError
from selfevolve.topics import Topics
from selfevolve.validation import parse_query_line
from streams.kafka_io import ensure_topics, producer, tail_consumer


async def produce_lines(settings: Settings, lines: Iterable[str]) -> tuple[int, list[tuple[int, str]]]:
    """Send each JSON line as a Query; unparseable lines are reported and skipped, never sent.

    Oversized texts are sent anyway: the router owns that rule and dead-letters them with the reason.
    """
    codec = Codec.from_dir()
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    prod = producer(settings)
    await prod.start()
    sent, errors = 0, []
    try:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse_query_line(line, int(time.time() * 1000))
            except ValidationError as e:
                errors.append((n, str(e)))
                continue
            await prod.send(topics.queries, key=record["query_id"].encode(), value=codec.encode("query", record))
            sent += 1
        await prod.flush()
    finally:
        await prod.stop()
    return sent, errors


async def print_answers(settings: Settings, *, follow: bool, tenant: str | None, out=print) -> int:
    """Print answers (JSON per line) from the start of the topic; with follow, keep waiting."""
    codec = Codec.from_dir()
    consumer = await tail_consumer(settings, Topics.from_settings(settings).answers, from_beginning=True)
    seen: set[str] = set()
    idle_since = time.time()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            if batches:
                idle_since = time.time()
            for msgs in batches.values():
                for m in msgs:
                    ans = codec.decode("answer", m.value)
                    # At-least-once delivery upstream: a reader keeps the first answer per query.
                    if ans["query_id"] in seen or (tenant and ans["tenant"] != tenant):
                        continue
                    seen.add(ans["query_id"])
                    row = {k: ans[k] for k in ("query_id", "tenant", "model", "strategy", "cost_usd", "answer")}
                    if not ans["model"]:
                        row["error"] = (f"no model answered ({', '.join(ans['models_called'])} all failed; "
                                        "their errors are in the inference_responses table)")
                    out(json.dumps(row))
            if not follow and not batches and time.time() - idle_since > 1.0:
                return len(seen)
    finally:
        await consumer.stop()
