"""Statistics agent: per-(model, domain) tables (all-time and windowed) fed by scores; promotions follow."""

from __future__ import annotations

from selfevolve import promotion, stats
from streams.evolution import apply_model_event
from streams.runtime import now_ms


def register(app, rt) -> None:
    # Keyed by domain, like the scores topic, so each table is co-partitioned with its source.
    alltime = app.Table("model-stats", default=None, partitions=rt.settings.topic_partitions)
    window = app.Table("model-stats-window", default=None, partitions=rt.settings.topic_partitions)
    empty_window = stats.window_initialize(rt.settings.window_size)

    @app.agent(rt.topic(rt.topics.scores), name="stats")
    async def stats_agent(stream):
        core = rt.routing()
        async for score in rt.records(stream, "score"):
            if not score["contested"]:
                continue  # a model called alone always "wins": only head-to-head answers count
            d = str(score["domain"])
            alltime[d] = stats.table_agg(alltime.get(d) or {}, score)
            window[d] = stats.table_agg(window.get(d) or {}, score, empty_window)
            decided = promotion.decide(stats.table_result(alltime[d]), core["hierarchy"], rt.settings,
                                       gated=rt.settings.promote_gated, ts_ms=now_ms())
            for e in decided:
                apply_model_event(rt, e)  # at once, so the next score does not decide it again
                await rt.publish(rt.topics.model_events, "model_event", e, key=e["model"])

    @app.page("/stats")
    async def stats_page(web, request):
        """The tables as they stand: raw aggregator states and their results, per domain key."""
        return web.json({"alltime": {k: v for k, v in alltime.items()},
                         "window": {k: v for k, v in window.items()},
                         "result": {k: stats.table_result(v) for k, v in alltime.items()}})
