"""The Faust applications: one per stream-worker role, built from Settings with that role's agent modules."""

from __future__ import annotations

import sys

import faust

from selfevolve.config import Settings
from selfevolve.errors import ConfigError
from streams.kafka_io import faust_credentials, group_id
from streams.runtime import Runtime

# Two roles, so the stream work uses both cores of a small host (one Python event loop saturated a core at
# ~110 q/s). `serve` is the answer path: routing, scoring, feedback; any number of serve workers share its
# consumer groups, each with its own replica of the routing history (streams/history_follow.py). `history`
# is everything downstream of the answers: the ClickHouse sink and SQL endpoint, the statistics and gap
# tables, the meta-learner. They share state only through topics: model events and strategy changes made in
# one reach the other's evolution followers (streams/model_events.py).
ROLES = {
    "serve": ("streams.history_follow", "streams.router", "streams.scorer", "streams.feedback", "streams.model_events",
              "streams.metrics"),
    "history": ("streams.sink", "streams.evolution_agent", "streams.model_events", "streams.metrics"),
}


def app_id(settings: Settings, role: str) -> str:
    """The Faust app id of a role: its consumer group and changelog prefix, one per role and topic prefix."""
    return group_id(settings, "streams" if role == "serve" else "history")


def create_app(settings: Settings, modules: tuple[str, ...] | None = None,
               role: str = "serve") -> tuple[faust.App, Runtime]:
    if role not in ROLES:
        raise ConfigError(f"unknown stream worker role {role!r}; expected one of {', '.join(ROLES)}")
    rt = Runtime.build(settings, owns_history=role == "serve")
    app = faust.App(
        app_id(settings, role),
        broker=f"kafka://{settings.kafka_bootstrap}",
        **faust_credentials(settings),  # this role's own principal when Kafka security is on
        store="memory://",
        datadir=str(settings.home / f"faust-{role}"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="exactly_once" if settings.exactly_once else "at_least_once",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=settings.web_port + settings.serve_worker if role == "serve" else settings.history_web_port,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
    )
    rt.app = app

    @app.page("/ready")
    async def ready(web, request):
        """History role: ready once its Faust consumer owns partitions and its tables are rebuilt. A serve
        worker reads with its own consumers: ready once its evolution followers and its history replica
        have caught up with the topics (it may own no query partition: more workers than partitions)."""
        if role == "serve":
            follower = rt.history_follower
            replicated = follower is not None and follower.ready.is_set()
            return web.json({"ready": rt.recovered.is_set() and replicated, "role": role,
                             "worker": settings.serve_worker, "recovered": rt.recovered.is_set(),
                             "history_offset": rt.serve.offset if rt.serve is not None else 0})
        assigned = app.consumer.assignment() if app.consumer else set()
        recovered = app.tables.recovery.completed.is_set() and not app.in_recovery
        return web.json({"ready": bool(assigned) and recovered, "role": role, "partitions": len(assigned),
                         "recovered": recovered})

    if role == "serve":
        @app.page("/replica")
        async def replica(web, request):
            """This worker's replica of the routing history: the history offset it has folded to, its size and
            digest (streams/runtime.py ServeState.digest; replicas at one offset must agree), the history
            records its follower folded and skipped since start (a skipped one gets no dead letter: this is
            where it shows), and how far its evolution followers have read ("topic:partition" -> next offset)."""
            serve, follower = rt.serve, rt.history_follower
            counts = {"folded": follower.folded, "skipped": follower.skipped} if follower is not None else {}
            if serve is None:
                return web.json({"offset": 0, "records": 0, "digest": None, **counts, "followed": dict(rt.followed)})
            return web.json({"offset": serve.offset, "records": len(serve.history), "digest": serve.digest(),
                             **counts, "followed": dict(rt.followed)})

    import importlib

    for name in modules if modules is not None else ROLES[role]:
        importlib.import_module(name).register(app, rt)
    return app, rt


def main(argv: list[str] | None = None) -> None:
    """`python -m streams.app [--role serve|history] worker ...` runs one stream worker; settings come from
    the environment, the rest of the command line goes to Faust."""
    args = list(argv if argv is not None else sys.argv[1:])
    role = "serve"
    if args[:1] == ["--role"] and len(args) > 1:
        role, args = args[1], args[2:]
    app, rt = create_app(Settings.load(), role=role)
    if role == "serve":
        # Load the serve state and the embedding model before Faust starts consuming: done lazily by the
        # first event, it held the event loop for ~8 s right after partitions were assigned, and in the
        # SIGKILL test every such restart with a backlog skipped ~10 queries per partition (fetched, never
        # delivered, then committed past by Faust's gap handling).
        rt.serving().embedder.encode(["warm-up"])
    sys.argv = [sys.argv[0], *args]
    app.main()


if __name__ == "__main__":
    main()
