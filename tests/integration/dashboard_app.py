"""The dashboard test's server (its own process: chdb allows one engine folder per process): a chdb history store
with a made-up history, its SQL endpoint, and a FastAPI app with the dashboard mounted, answers still arriving.

python dashboard_app.py HOME PORT: writes HOME/ready once both listen; inserts one answer a second until killed.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from selfevolve.config import Settings
from streams.dashboard import mount_dashboard
from streams.sqlclient import serve_sql
from streams.store import HistoryStore

T0 = 1_790_000_000_000  # event time of the first answer (ms)
MODELS = {"gpt-4-1106-preview": 0.005038, "gpt-3.5-turbo-1106": 0.0004219, "mistralai/mixtral-8x7b-chat": 0.0006}
STRATEGIES = ("direct", "cascade", "parallel", "cached")


def answer(i: int, rng: random.Random) -> dict:
    strategy = STRATEGIES[i % 4] if i > 40 else "cascade"  # the mix shifts as the router learns
    model = rng.choice(list(MODELS)) if strategy != "direct" else "gpt-3.5-turbo-1106"
    cost = 0.0 if strategy == "cached" else MODELS[model] * (2 if strategy == "parallel" else 1)
    return {"query_id": f"q{i}", "tenant": "acme", "model": model, "answer": "...", "composite": 0.8,
            "cost_usd": cost, "strategy": strategy, "models_called": [model], "fallbacks": [], "domain": i % 3,
            "latency_ms": 40.0, "ts_ms": T0 + i * 60_000}


def history(store: HistoryStore, n: int) -> None:
    rng = random.Random(7)
    store.insert("answer", [answer(i, rng) for i in range(n)])
    store.insert("feedback", [{"query_id": f"q{i}", "model": "gpt-3.5-turbo-1106", "tenant": "acme",
                               "quality": 0.5 + 0.4 * i / n, "source": "user", "ts_ms": T0 + i * 60_000}
                              for i in range(0, n, 3)])
    store.insert("score", [{"query_id": f"q{i}", "tenant": "acme", "model": m, "relevance": 1.0, "correctness": 1.0,
                            "completeness": 1.0, "clarity": 1.0, "composite": 0.8, "confidence": 0.9,
                            "winner": (i + j) % 3 == 0, "domain": i % 3, "cost_usd": 0.001, "contested": True,
                            "ts_ms": T0 + i * 60_000} for i in range(n) for j, m in enumerate(MODELS)])
    store.insert("model_event", [
        {"model": "mistralai/mixtral-8x7b-chat", "kind": "promote", "domain": 1, "old_role": "ta",
         "new_role": "teacher", "checkpoint": None, "reason": "win rate 0.74 over 60", "ts_ms": T0 + 50 * 60_000},
        {"model": "meta/code-llama-instruct-34b-chat", "kind": "spawn", "domain": 2, "old_role": None,
         "new_role": "student", "checkpoint": None, "reason": "gap in domain 2", "ts_ms": T0 + 70 * 60_000}])


async def main(home: Path, port: int) -> None:
    settings = Settings(home=home, sql_port=0, dashboard_refresh_s=1.0)
    store = HistoryStore.open(settings)
    store.ensure_schema()
    n = 90
    history(store, n)
    endpoint = await serve_sql(store, settings)
    app = FastAPI()
    mount_dashboard(app, settings.model_copy(update={"sql_port": int(endpoint.url.rsplit(":", 1)[1])}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    (home / "ready").write_text(endpoint.url)
    rng = random.Random(8)
    while not serving.done():  # the history goes on: the page must show it without a reload
        await asyncio.sleep(1.0)
        await asyncio.to_thread(store.insert, "answer", [answer(n, rng)])
        n += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
