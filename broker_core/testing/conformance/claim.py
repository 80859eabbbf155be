"""Conformance of claim: batches, several topics, and consumers competing for one group."""

from __future__ import annotations

import asyncio

import pytest

from broker_core.testing.conformance.base import G2, T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["ClaimConformance"]


class ClaimConformance(ConformanceBase):
    """The claim transition (READY -> LEASED) and one lease at a time (invariant 2).

    Covers ``max_count``, claiming across topics in per-topic order, claims for a topic or
    group with no subscription, and competing (also concurrent) consumers never sharing an
    event.
    """

    @pytest.mark.asyncio
    async def test_claim_respects_max_count(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        assert len(await harness.claim(G, T, max_count=2)) == 2
        assert len(await harness.claim(G, T, max_count=2)) == 1
        assert await harness.claim(G, T, max_count=2) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 3, 0, 0)

    @pytest.mark.asyncio
    async def test_claim_from_several_topics(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T2, G)
        await harness.publish(T, "a1", "a2")
        await harness.publish(T2, "b1", "b2")
        msgs = await harness.claim(G, [T, T2], max_count=10)
        assert sorted((m.topic, m.event_id) for m in msgs) == [
            (T, "a1"),
            (T, "a2"),
            (T2, "b1"),
            (T2, "b2"),
        ]
        assert [m.event_id for m in msgs if m.topic == T] == ["a1", "a2"]
        assert [m.event_id for m in msgs if m.topic == T2] == ["b1", "b2"]

    @pytest.mark.asyncio
    async def test_claim_of_unsubscribed_topic_is_empty(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        assert await harness.claim(G2, T) == []
        assert await harness.claim(G, T2) == []

    @pytest.mark.asyncio
    async def test_competing_consumers_get_different_events(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T)
        [b] = await harness.claim(G, T)
        assert (a.event_id, b.event_id) == ("e1", "e2")
        assert a.receipt.token != b.receipt.token

    @pytest.mark.asyncio
    async def test_concurrent_claims_never_share_an_event(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        ids = [f"e{i:03d}" for i in range(120)]
        await harness.publish(T, *ids)

        async def consumer() -> list[str]:
            got: list[str] = []
            for _ in range(40):  # bounded: 10 consumers x 40 rounds >> 120 events
                batch = await harness.claim_ids(G, T, max_count=3)
                if not batch:
                    break
                got += batch
                await asyncio.sleep(0)
            return got

        results = await asyncio.gather(*(consumer() for _ in range(10)))
        claimed = [i for r in results for i in r]
        assert sorted(claimed) == ids  # each exactly once
        for r in results:  # and each consumer saw them in queue order
            assert r == sorted(r)
