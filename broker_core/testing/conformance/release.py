"""Conformance of release: events given back unhandled, their attempt uncounted."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["ReleaseConformance"]


class ReleaseConformance(ConformanceBase):
    """The release transition: LEASED -> READY at the front, attempt uncounted.

    What a consumer that stops does with events it will not handle: giving them back is
    no failed attempt (invariant 11). Stale receipts are refused (invariant 3).
    """

    @pytest.mark.asyncio
    async def test_release_goes_to_the_front_uncounted(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b = await harness.claim(G, T, max_count=2)
        assert await tr.release([a.receipt, b.receipt]) == [True, True]
        assert _counts(await tr.stats(T, G)) == (3, 0, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        # Given back together, they keep their order at the front.
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 1), ("e2", 1), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_releases_never_use_up_attempts(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        for _ in range(5):
            [m] = await harness.claim(G, T, max_attempts=2)
            assert await tr.release([m.receipt]) == [True]
        [m] = await harness.claim(G, T, max_attempts=2)
        assert m.attempt == 1
        assert await tr.dead_letters(T, G) == []

    @pytest.mark.asyncio
    async def test_release_keeps_earlier_attempts(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        assert await tr.nack(m.receipt, error="ValueError: first")
        [m] = await harness.claim(G, T)
        assert m.attempt == 2
        assert await tr.release([m.receipt]) == [True]
        [m] = await harness.claim(G, T)
        assert m.attempt == 2
        assert await tr.kill(m.receipt, reason="handler")
        [dead] = await tr.dead_letters(T, G)
        assert (dead.attempts, dead.error) == (2, "ValueError: first")

    @pytest.mark.asyncio
    async def test_release_answers_per_receipt_and_fences(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        [old] = await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        [again] = await harness.claim(G, T)
        [other] = await harness.claim(G, T)
        assert await tr.ack([other.receipt]) == [True]
        receipts = [old.receipt, again.receipt, other.receipt]
        assert await tr.release(receipts) == [False, True, False]
        assert _counts(await tr.stats(T, G)) == (2, 0, 0, 0)
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)  # the expiry still counts
