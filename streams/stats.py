"""Statistics agent: per-(model, domain) tables (all-time and windowed) fed by scores; promotions follow."""

from __future__ import annotations

from selfevolve.wire import once

from selfevolve.evolution import promotion, stats
from streams.evolution_follow import apply_model_event
from streams.runtime import now_ms


def register(app, rt) -> None:
    # Keyed by domain, like the scores topic, so each table is co-partitioned with its source. Each value is
    # a selfevolve.wire.once entry: a score redelivered after a crash is not counted twice.
    alltime = app.Table("model-stats", default=None, partitions=rt.settings.topic_partitions)
    window = app.Table("model-stats-window", default=None, partitions=rt.settings.topic_partitions)
    empty_window = stats.window_initialize(rt.settings.window_size)

    @app.agent(rt.topic(rt.topics.scores), name="stats")
    async def stats_agent(stream):
        core = rt.routing()

        async def fold(score, at) -> None:
            if not score["contested"]:
                return  # a model called alone always "wins": only head-to-head answers count
            d = str(score["domain"])
            entry, win = alltime.get(d), window.get(d)
            if not once.applied(entry, at):
                table = stats.table_agg(once.value(entry, {}), score)
                decided = promotion.decide(stats.table_result(table), core["hierarchy"], rt.settings,
                                           gated=rt.settings.promote_gated, ts_ms=now_ms())
                for e in decided:
                    apply_model_event(rt, e)  # at once, so the next score does not decide it again
                    await rt.publish(rt.topics.model_events, "model_event", e, key=e["model"])
                # Written after the promotions are acknowledged: a crash in between repeats them (roles are
                # set, not toggled), where the other order could record the score and lose the promotion.
                alltime[d] = once.advance(table, at)
            if not once.applied(win, at):
                window[d] = once.advance(stats.table_agg(once.value(win, {}), score, empty_window), at)

        await rt.each(stream, "score", fold)  # a score that fails is dead-lettered, the rest go on

    @app.page("/stats")
    async def stats_page(web, request):
        """The tables as they stand: aggregator states and their results per domain key, and the last score
        position each domain has folded."""
        return web.json({"alltime": {k: once.value(v, {}) for k, v in alltime.items()},
                         "window": {k: once.value(v, {}) for k, v in window.items()},
                         "result": {k: stats.table_result(once.value(v, {})) for k, v in alltime.items()},
                         "positions": {k: v["at"] for k, v in alltime.items()},
                         # Records the ClickHouse sink (same worker) could not read or store.
                         "sink_skipped": rt.core.get("sink_skipped", 0)})
