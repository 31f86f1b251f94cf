"""The scorer's changelog-backed table against the real broker: committed writes and tombstones survive a
restart, aborted writes do not."""

from __future__ import annotations

import asyncio

from streams.changelog import ChangelogTable
from streams.kafka_io import ensure_topics, transactional_producer
from streams.runtime import Runtime


def test_restore_reads_back_committed_writes_and_skips_aborted_ones(make_settings):
    settings = make_settings()

    async def run():
        table = ChangelogTable(settings, "scorer-state")
        await ensure_topics(settings, [table.topic], compact=True)
        producer = await transactional_producer(settings, "changelog-test")
        send = Runtime.build(settings).through(producer).send_raw
        table.put(0, "q1", {"decision": "d1", "responses": []})
        table.put(3, "q2", {"done": True})
        table.put(0, "q1", {"decision": "d1", "responses": ["r1"]})  # the latest value per key is written
        async with producer.transaction():
            await table.flush(send)
        assert table.pending == {}
        table.delete(3, "q2")  # a tombstone: the key is gone after a restore
        async with producer.transaction():
            await table.flush(send)
        table.put(3, "q3", {"decision": "d3", "responses": []})
        try:
            async with producer.transaction():
                await table.flush(send)
                raise RuntimeError("killed before the batch committed")
        except RuntimeError:
            pass
        await producer.stop()
        fresh = ChangelogTable(settings, "scorer-state")
        read = await fresh.restore({0, 3})
        return read, fresh.data

    read, data = asyncio.run(run())
    assert data == {0: {"q1": {"decision": "d1", "responses": ["r1"]}}, 3: {}}
    assert read == 3, "one write per key per flush, the tombstone, and not the aborted write"
