"""The Faust application: build the app from Settings and register every agent module on it."""

from __future__ import annotations

import sys

import faust

from selfevolve.config import Settings
from streams.runtime import Runtime

AGENT_MODULES = ("streams.router", "streams.scorer", "streams.feedback", "streams.sink", "streams.stats",
                 "streams.gaps", "streams.metalearner", "streams.model_events")


def create_app(settings: Settings, modules: tuple[str, ...] = AGENT_MODULES) -> tuple[faust.App, Runtime]:
    rt = Runtime.build(settings)
    app = faust.App(
        # The id is the consumer group and changelog prefix: one per topic prefix keeps stacks apart.
        f"{settings.topic_prefix}streams".replace(".", "-"),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.home / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="exactly_once" if settings.exactly_once else "at_least_once",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.web_port,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
    )
    rt.app = app

    @app.page("/ready")
    async def ready(web, request):
        """Ready once this worker owns partitions: before that, produced queries would wait."""
        assigned = app.consumer.assignment() if app.consumer else set()
        # Tables must be rebuilt from their changelogs before their state means anything.
        recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
        return web.json({"ready": bool(assigned) and recovered, "partitions": len(assigned),
                         "recovered": recovered})

    import importlib

    for name in modules:
        importlib.import_module(name).register(app, rt)
    return app, rt


def main(argv: list[str] | None = None) -> None:
    """`python -m streams.app worker` runs the stream worker with settings from the environment."""
    app, rt = create_app(Settings())
    # Load the routing core and the embedding model before Faust starts consuming: done lazily by the first
    # event, it held the event loop for ~8 s right after partitions were assigned, and in the SIGKILL test
    # every such restart with a backlog skipped ~10 queries per partition (fetched, never delivered, then
    # committed past by Faust's gap handling).
    rt.routing()["embedder"].encode(["warm-up"])
    sys.argv = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    app.main()


if __name__ == "__main__":
    main()
