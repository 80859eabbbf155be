"""Conformance of progress: claiming drains a group, and wait wakes when work arrives."""

from __future__ import annotations

import asyncio

import pytest

from broker_core.testing.conformance.base import G2, T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["ProgressConformance"]


class ProgressConformance(ConformanceBase):
    """Progress (invariant 4) and ``wait``, the only tests that use real (bounded) time.

    Covers a consumer that keeps claiming finishing every event through nacks and
    expiries, and wait returning False on timeout, True at once when work is ready, and
    True when a publish arrives, for every waiter of every group the publish reaches.
    """

    # -- progress -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_claiming_consumer_drains_everything(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        ids = [f"e{i:02d}" for i in range(30)]
        await harness.publish(T, *ids)
        done: set[str] = set()
        for _ in range(200):  # bounded; each event fails at most twice
            ms = await harness.claim(G, T, max_count=4, lease=1.5, max_attempts=5)
            for m in ms:
                if m.attempt == 1 and int(m.event_id[1:]) % 3 == 0:
                    assert await tr.nack(m.receipt, delay=2.5)
                elif m.attempt <= 2 and int(m.event_id[1:]) % 5 == 0:
                    pass  # crash: the lease expires
                else:
                    assert await tr.ack([m.receipt]) == [True]
                    done.add(m.event_id)
            harness.clock.advance(1)
            if len(done) == len(ids):
                break
        assert sorted(done) == ids
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    # -- wait ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_wait_returns_false_after_timeout(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        woke = await asyncio.wait_for(harness.transport.wait(G, [T], 0.05), 2.0)
        assert woke is False

    @pytest.mark.asyncio
    async def test_wait_returns_at_once_when_work_is_ready(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        assert await asyncio.wait_for(harness.transport.wait(G, [T], 5.0), 1.0) is True

    @pytest.mark.asyncio
    async def test_wait_is_woken_by_a_publish(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T2, G)
        waiter = asyncio.create_task(harness.transport.wait(G, [T, T2], 10.0))
        await asyncio.sleep(0.02)  # let it block
        assert not waiter.done()
        await harness.publish(T2, "e1")
        assert await asyncio.wait_for(waiter, 1.0) is True
        assert await harness.claim_ids(G, T2) == ["e1"]

    @pytest.mark.asyncio
    async def test_wait_wakes_every_group_reached(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        waiters = [asyncio.create_task(harness.transport.wait(g, [T], 10.0)) for g in (G, G, G2)]
        await asyncio.sleep(0.02)
        await harness.publish(T, "e1")
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [True, True, True]
