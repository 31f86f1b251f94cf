"""Model worker: consume inference requests for its backends, call them, produce responses transactionally."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from selfevolve.models.catalogue import Catalogue
from selfevolve.wire.codec import Codec
from selfevolve.config import Settings
from selfevolve.wire.deadletter import dead_letter
from selfevolve.errors import DecodeError, SelfEvolveError, ValidationError
from selfevolve.models.serving import serve_request
from selfevolve.wire.tenancy import record_key
from selfevolve.wire.topics import Topics
from streams.metrics import observe_batch, observe_response, serve_metrics, worker_index

log = logging.getLogger("selfevolve.model_worker")
GROUP = "selfevolve-model-workers"


async def run(settings: Settings, backends_served: tuple[str, ...], worker_id: str,
              stop: asyncio.Event) -> None:
    """Consume-transform-produce loop; each poll's responses and offsets commit in one transaction."""
    from workers.backends.registry import build_backend
    from streams.kafka_io import client_options

    topics = Topics.from_settings(settings)
    codec = Codec.from_dir()
    catalogue = Catalogue.load(settings.catalogue)
    backends = {b: build_backend(b, settings, replay_dir=settings.replay_dir) for b in backends_served}
    reloads = asyncio.create_task(follow_versions(settings, codec, topics, backends)) if "local" in backends else None
    preload = (asyncio.create_task(_preload(backends["local"], [s for s in catalogue if s.backend == "local"]))
               if "local" in backends else None)
    consumer = AIOKafkaConsumer(
        *[topics.requests_for(b) for b in backends_served],
        bootstrap_servers=settings.kafka_bootstrap, group_id=GROUP, **client_options(settings),
        enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed")
    # A stable transactional id fences a killed predecessor: its open transaction is aborted.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **client_options(settings),
                                max_request_size=settings.kafka_max_message_bytes,
                                transactional_id=f"selfevolve-model-worker-{worker_id}")
    from streams.kafka_io import ensure_topics

    await ensure_topics(settings)
    await producer.start()
    await consumer.start()
    log.info("model worker %s serving %s", worker_id, ",".join(backends_served))
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=256)
            if not batches:
                continue
            t0, messages = time.perf_counter(), [m for msgs in batches.values() for m in msgs]
            outs = await asyncio.gather(*(_handle(m, codec, catalogue, backends, settings, topics)
                                          for m in messages))
            async with producer.transaction():
                for topic, key, value in outs:
                    await producer.send(topic, value=value, key=key)
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}
                await producer.send_offsets_to_transaction(offsets, GROUP)
            observe_batch("model-worker", time.perf_counter() - t0, len(messages))
    finally:
        for task in (reloads, preload):
            if task is not None:
                task.cancel()
        await consumer.stop()
        await producer.stop()


async def _preload(backend, specs) -> None:
    """Load the local models while the worker already consumes; a failure is logged, and each request then
    reports it as its own error."""
    try:
        await backend.preload(specs)
        log.info("preloaded %s", ",".join(s.name for s in specs))
    except SelfEvolveError as e:
        log.error("cannot preload local models: %s", e)


async def follow_versions(settings: Settings, codec: Codec, topics: Topics, backends: dict) -> None:
    """Hot-load each new student version published on model-events (from the start: the latest wins)."""
    from pathlib import Path

    from streams.kafka_io import tail_consumer

    consumer = await tail_consumer(settings, topics.model_events, from_beginning=True)
    try:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                for m in msgs:
                    e = codec.decode("model_event", m.value)
                    if e["kind"] == "version" and e["checkpoint"]:
                        try:
                            await backends["local"].reload(Path(e["checkpoint"]), model=e["model"])
                            log.info("hot-loaded %s version %s", e["model"], e["checkpoint"])
                        except Exception as err:  # noqa: BLE001 - a bad version must not stop serving
                            log.error("cannot load %s: %s", e["checkpoint"], err)
    finally:
        await consumer.stop()


async def _handle(msg, codec: Codec, catalogue: Catalogue, backends, settings: Settings,
                  topics: Topics) -> tuple[str, bytes | None, bytes]:
    """The response to one request message, or its dead letter if it cannot be read or served."""
    now = int(time.time() * 1000)
    try:
        return await _serve(msg, codec, catalogue, backends, settings, topics, now)
    except Exception as e:  # noqa: BLE001 - one poison request must not stop the worker
        if not isinstance(e, (DecodeError, ValidationError)):
            log.exception("dead-lettering request at %s/%s: serving it failed", msg.partition, msg.offset)
        record = dead_letter(msg.topic, msg.partition, msg.offset, msg.value or b"", e, now,
                             max_payload=settings.dead_letter_payload_bytes)
        return topics.dead_letter, (msg.key or b"")[:256] or None, codec.encode("dead_letter", record)


async def _serve(msg, codec: Codec, catalogue: Catalogue, backends, settings: Settings, topics: Topics,
                 now: int) -> tuple[str, bytes | None, bytes]:
    request = codec.decode("inference_request", msg.value)
    response = await serve_request(request, catalogue, backends,
                                   timeout_s=settings.backend_timeout_s, now_ms=now)
    observe_response(response)
    # Keyed by (tenant, query id) like the query's decision, so the scorer finds both in one partition.
    return topics.inference_responses, record_key(request).encode(), codec.encode(
        "inference_response", response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfevolve-model-worker", description=__doc__)
    parser.add_argument("--backends", default="replay", help="comma-separated backends to serve")
    parser.add_argument("--worker-id", default="0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.load()
    serve_metrics(settings, *worker_index(args.worker_id))

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, tuple(args.backends.split(",")), args.worker_id, stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
