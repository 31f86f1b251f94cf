"""Agent tests run the real agents without a broker: Faust agents in test_context(), the consumer tasks' batch
functions on messages built here; sends are captured in memory."""

from __future__ import annotations

import asyncio

import pytest

from selfevolve.config import Settings
from streams.app import create_app


class Harness:
    def __init__(self, settings: Settings, modules: tuple[str, ...], role: str = "serve"):
        self.app, self.rt = create_app(settings, modules=modules, role=role)
        self.sent: list[tuple[str, str, dict, str | None]] = []
        self.hold_acks = False  # True: sends stay unacknowledged until release_acks(), like a slow broker
        self.pending: list[asyncio.Future] = []

        async def capture(topic, kind, record, key):
            # Round-trip through Avro, as the broker would carry it.
            self.sent.append((topic, kind, self.rt.codec.decode(kind, self.rt.codec.encode(kind, record)), key))
            done = asyncio.get_running_loop().create_future()
            if self.hold_acks:
                self.pending.append(done)
            else:
                done.set_result(None)  # acknowledged at once, as a broker would be
            return done

        async def capture_raw(topic, key, value, partition=None):
            # Raw writes are the changelogs (Avro records go through send above).
            self.raw.append((topic, key, value, partition))
            done = asyncio.get_running_loop().create_future()
            if self.hold_acks:
                self.pending.append(done)
            else:
                done.set_result(None)
            return done

        self.raw: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.rt.send = capture
        self.rt.send_raw = capture_raw

    def release_acks(self) -> None:
        for f in self.pending:
            if not f.done():
                f.set_result(None)
        self.pending.clear()

    def agent(self, name: str):
        return self.app.agents[name]

    def of_kind(self, kind: str) -> list[dict]:
        return [r for _, k, r, _ in self.sent if k == kind]

    async def wait_for(self, kind: str, n: int, timeout: float = 120.0) -> list[dict]:
        for _ in range(int(timeout * 20)):
            if len(self.of_kind(kind)) >= n:
                break
            await asyncio.sleep(0.05)
        return self.of_kind(kind)


@pytest.fixture
def harness(tmp_path):
    def make(*modules: str, role: str = "serve", **overrides) -> Harness:
        return Harness(Settings(topic_prefix="agents.", home=tmp_path, **overrides), modules, role)

    return make
