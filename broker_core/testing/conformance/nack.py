"""Conformance of nack: straight back to the front, or after a delay."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["NackConformance"]


class NackConformance(ConformanceBase):
    """The nack transitions: LEASED -> READY at the front, or LEASED -> DELAYED -> READY.

    Covers the attempt being counted, a delayed event staying out of claims until it is
    due, and a due event being noticed by claim alone.
    """

    @pytest.mark.asyncio
    async def test_nack_returns_to_front(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        _a, b = await harness.claim(G, T, max_count=2)
        assert await harness.transport.nack(b.receipt)
        assert _counts(await harness.transport.stats(T, G)) == (2, 1, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e2", 2), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_nack_with_delay_waits_until_due(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        [a] = await harness.claim(G, T)
        assert await tr.nack(a.receipt, delay=5.5, error="ValueError: later")
        assert _counts(await tr.stats(T, G)) == (2, 0, 1, 0)
        assert await harness.claim_ids(G, T, max_count=1) == ["e2"]
        harness.clock.advance(5)
        assert _counts(await tr.stats(T, G)) == (1, 1, 1, 0)
        harness.clock.advance(1)
        assert _counts(await tr.stats(T, G)) == (2, 1, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 2), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_due_event_is_noticed_by_claim_without_stats(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        assert await harness.transport.nack(a.receipt, delay=1.5)
        assert await harness.claim(G, T) == []
        harness.clock.advance(2)
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)
