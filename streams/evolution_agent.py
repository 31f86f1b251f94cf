"""Evolution agent: the evolution fold over scores, its per-domain parts in Faust tables, outputs acked first.

One agent, so each score goes through the statistics half and then the gap half of one fold step: the
spawner a gap wakes sees the statistics with that very score in them (its roster's real per-domain stats).
Two tables keyed by domain, like the scores topic, so each is co-partitioned with its source: statistics
(all-time and windowed) and gaps (window and spawner). Each value is a selfevolve.wire.once entry, so a
score redelivered after a crash is folded once per table. The hierarchy and the fold's own pending model
events live in memory, rebuilt at start-up from the model-events topic by the evolution followers.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from selfevolve.flow.evolution import DomainGaps, DomainStats, EvolutionFold, EvolutionState
from selfevolve.flow.events import Event, Out
from selfevolve.models.catalogue import Catalogue
from selfevolve.wire import once

log = logging.getLogger("selfevolve.evolution")
STATS_TABLE, GAPS_TABLE = "evolution-stats", "evolution-gaps"


class EvolutionHost:
    """The history role's evolution fold. `state` holds its global part (the hierarchy and own model events
    not yet read back); each score's domain parts are read from the tables and written back to them."""

    def __init__(self, fold: EvolutionFold) -> None:
        self.fold = fold
        self.state: EvolutionState = fold.initialize()

    def follow(self, event: Event) -> None:
        """A follower (rt.followers): every model event of the topic, this worker's own included."""
        if event.kind == "model_event":
            self.state, _ = self.fold.step(self.state, event)

    def score(self, record: dict, stats_entry: dict | None, gaps_entry: dict | None,
              at: tuple[int, int]) -> tuple[list[Out], DomainStats | None, DomainGaps | None]:
        """Step one score through the halves its tables have not folded yet; returns the outputs and the new
        domain parts to store (None: that table is left as it is). The global part is kept at once, so the
        next score and the model events read back see this score's moves."""
        d = int(record["domain"])
        do_stats = not once.applied(stats_entry, at) and record["contested"]
        do_gaps = not once.applied(gaps_entry, at) and record["winner"]
        view = replace(self.state,
                       stats={d: DomainStats.from_json(stats_entry["value"])} if stats_entry else {},
                       gaps={d: DomainGaps.from_json(gaps_entry["value"])} if gaps_entry else {})
        outs: list[Out] = []
        if do_stats:
            view, outs = self.fold.stats_step(view, record)
        if do_gaps:
            view, more = self.fold.gaps_step(view, record)
            outs += more
        self.state = replace(view, stats={}, gaps={})
        return outs, view.stats[d] if do_stats else None, view.gaps[d] if do_gaps else None


def register(app, rt) -> None:
    host = EvolutionHost(EvolutionFold(rt.settings, Catalogue.load(rt.settings.catalogue)))
    rt.followers.append(host.follow)
    stats_table = app.Table(STATS_TABLE, default=None, partitions=rt.settings.topic_partitions)
    gaps_table = app.Table(GAPS_TABLE, default=None, partitions=rt.settings.topic_partitions)

    @app.agent(rt.topic(rt.topics.scores), name="evolution")
    async def evolution(stream):
        async def fold(score, at) -> None:
            d = str(score["domain"])
            outs, stats_part, gaps_part = host.score(score, stats_table.get(d), gaps_table.get(d), at)
            acks = [await rt.send_out(o) for o in outs]
            for ack in acks:
                await ack
            # Written after every output is acknowledged: a crash in between repeats the outputs (roles are
            # set, not toggled), where the other order could record the score and lose its promotion.
            if stats_part is not None:
                stats_table[d] = once.advance(stats_part.to_json(), at)
            if gaps_part is not None:
                gaps_table[d] = once.advance(gaps_part.to_json(), at)

        await rt.each(stream, "score", fold)  # a score that fails is dead-lettered, the rest go on

    @app.page("/stats")
    async def stats_page(web, request):
        """The tables as they stand: per domain key the statistics (aggregator states and their results),
        the gap windows, the last score position each has folded, and the hierarchy the fold holds."""
        values = {k: DomainStats.from_json(once.value(v, None)) for k, v in stats_table.items()}
        return web.json({"alltime": {k: v.alltime for k, v in values.items()},
                         "window": {k: v.window for k, v in values.items()},
                         "result": {k: v.results() for k, v in values.items()},
                         "positions": {k: v["at"] for k, v in stats_table.items()},
                         "gaps": {k: once.value(v, None) for k, v in gaps_table.items()},
                         "gap_positions": {k: v["at"] for k, v in gaps_table.items()},
                         "hierarchy": host.state.hierarchy,
                         # Records the ClickHouse sink (same worker) could not read or store.
                         "sink_skipped": rt.sink_skipped})
