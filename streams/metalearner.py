"""Meta-learner: every interval, score each strategy from ClickHouse and nudge θh/θl (Algorithm 5.3)."""

from __future__ import annotations

import asyncio
import logging

from selfevolve.evolution import metalearn
from streams.evolution_follow import apply_strategy
from streams.runtime import infrastructure, now_ms

log = logging.getLogger("selfevolve.metalearner")


def register(app, rt) -> None:
    @app.timer(interval=rt.settings.metalearn_interval_s)
    async def tune_thresholds():
        try:
            await _tune(rt)
        except Exception as e:  # noqa: BLE001 - a round that fails (odd rows, a store hiccup) waits for the next
            if infrastructure(e):
                raise
            log.exception("threshold tuning skipped this round")


async def _tune(rt) -> None:
    """One round: score each strategy over the horizon, and publish the nudged thresholds if they moved."""
    store = rt.core.get("store")
    if store is None:
        return
    # The recent past only: thresholds should answer to today's traffic, not last month's.
    since = now_ms() - int(rt.settings.metalearn_horizon_s * 1000)
    sql = metalearn.STRATEGY_SQL.replace("{since_ms:Int64}", str(since))
    columns, rows = await asyncio.to_thread(store.query, sql)
    core = rt.routing()
    router = core["router"]
    sups = [s.cost_per_call or 0.0 for s in core["catalogue"].active() if s.role == "supervisor"]
    event = metalearn.tune([dict(zip(columns, r)) for r in rows], router.theta_high, router.theta_low,
                           lam=rt.settings.cost_lambda, delta=rt.settings.metalearn_delta, ts_ms=now_ms(),
                           cost_scale=max(sups, default=0.0) or None)
    if (event["theta_high"], event["theta_low"]) != (router.theta_high, router.theta_low):
        apply_strategy(rt, event)
        await rt.publish(rt.topics.strategy, "strategy", event, key="global")
