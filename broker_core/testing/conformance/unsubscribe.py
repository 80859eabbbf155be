"""Conformance of unsubscribe: a group leaves a topic and takes nothing of others with it."""

from __future__ import annotations

import math

import pytest

from broker_core.testing.conformance.base import G2, T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness, body_of

__all__ = ["UnsubscribeConformance"]


class UnsubscribeConformance(ConformanceBase):
    """Unsubscribe: the subscription ends and the group's copies go, in every state.

    Covers the listings after it, events published afterwards, receipts made stale, the
    copies of other groups untouched (invariant 7), ids freed for a new publish once no
    group holds them, an ordered group's waiting events, a fresh start on subscribing
    again, the history of a topic with retention kept, and idempotence.
    """

    async def _every_state(self, harness: Harness, group: str) -> None:
        """Events e1-e4 of ``group``: LEASED, DELAYED, DEAD and READY."""
        tr = harness.transport
        await harness.publish(T, "e1", "e2", "e3", "e4")
        _, e2, e3 = await harness.claim(group, T, max_count=3)
        assert await tr.nack(e2.receipt, delay=50.0)
        assert await tr.kill(e3.receipt, reason="handler", error="ValueError: x")
        assert _counts(await tr.stats(T, group)) == (1, 1, 1, 1)

    @pytest.mark.asyncio
    async def test_unsubscribe_drops_the_group_and_every_copy(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T2, G)
        await self._every_state(harness, G)
        assert await tr.unsubscribe(T, G) is True
        assert await tr.groups(T) == []
        assert await tr.topics() == [T2]
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)
        assert await tr.dead_letters(T, G) == []
        assert await harness.claim(G, T, max_count=10) == []
        harness.clock.advance(100)  # the delayed and the leased event never come back
        assert await harness.claim(G, T, max_count=10) == []
        assert await harness.publish(T, "e5") == 0
        assert await tr.groups(T2) == [G]

    @pytest.mark.asyncio
    async def test_receipts_of_an_unsubscribed_group_are_stale(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, c = await harness.claim(G, T, max_count=3)
        assert await tr.unsubscribe(T, G)
        await tr.subscribe(T, G)
        assert await tr.ack([a.receipt]) == [False]
        assert await tr.nack(b.receipt) is False
        assert await tr.kill(c.receipt, reason="handler") is False
        assert await tr.extend([a.receipt], 5.0) == [False]
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_other_groups_keep_their_copies(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await self._every_state(harness, G)
        [m] = await harness.claim(G2, T)
        assert await tr.unsubscribe(T, G)
        assert await tr.groups(T) == [G2]
        assert _counts(await tr.stats(T, G2)) == (3, 1, 0, 0)
        assert await tr.ack([m.receipt]) == [True]
        rest = await harness.claim(G2, T, max_count=10)
        assert [(x.event_id, x.body) for x in rest] == [(i, body_of(i)) for i in ("e2", "e3", "e4")]
        assert await tr.ack([x.receipt for x in rest]) == [True] * 3
        # No group holds the ids any more, so they are new again.
        assert await harness.publish(T, "e1", "e2", "e3", "e4") == 4

    @pytest.mark.asyncio
    async def test_ids_only_the_group_held_are_freed(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await self._every_state(harness, G)
        assert await tr.unsubscribe(T, G)
        await tr.subscribe(T, G)
        assert await harness.publish(T, "e1", "e2", "e3", "e4") == 4
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt, m.body) for m in ms] == [
            (i, 1, body_of(i)) for i in ("e1", "e2", "e3", "e4")
        ]

    @pytest.mark.asyncio
    async def test_an_ordered_group_leaves_with_its_waiting_events(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await tr.subscribe(T, G2)
        events = [(f"e{i}", body_of(f"e{i}")) for i in range(1, 5)]
        await tr.publish(T, events, keys=["k", "k", "k", None])
        assert (await tr.stats(T, G)).ready == 4
        assert await tr.unsubscribe(T, G)
        # Subscribing again starts afresh, with new options.
        await tr.subscribe(T, G, ordered=False)
        assert await harness.claim(G, T, max_count=10) == []
        ms = await harness.claim(G2, T, max_count=10)
        assert await tr.ack([m.receipt for m in ms]) == [True] * 4
        assert await tr.publish(T, events, keys=["k", "k", "k", None]) == 8
        assert len(await harness.claim(G, T, max_count=10)) == 4

    @pytest.mark.asyncio
    async def test_the_history_keeps_what_an_unsubscribed_group_held(
        self, harness: Harness
    ) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=3600.0)
        await tr.subscribe(T, G)
        await self._every_state(harness, G)
        assert await tr.unsubscribe(T, G)
        assert (await tr.topic_stats(T)).retained == 4
        # Still held by the history: publishing the ids again adds nothing.
        await tr.subscribe(T, G2)
        assert await harness.publish(T, "e1", "e2") == 0
        await tr.subscribe(T, G, history=math.inf)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt, m.body) for m in ms] == [
            (i, 1, body_of(i)) for i in ("e1", "e2", "e3", "e4")
        ]
        assert await tr.unsubscribe(T, G)
        with pytest.raises(ValueError):
            await tr.rewind(T, G, history=math.inf)

    @pytest.mark.asyncio
    async def test_unsubscribe_is_idempotent(self, harness: Harness) -> None:
        tr = harness.transport
        assert await tr.unsubscribe(T, G) is False
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1")
        assert await tr.unsubscribe(T, G) is True
        assert await tr.unsubscribe(T, G) is False
        assert await tr.groups(T) == [G2]
        assert _counts(await tr.stats(T, G2)) == (1, 0, 0, 0)
