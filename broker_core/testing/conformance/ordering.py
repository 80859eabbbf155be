"""Conformance of ordered groups: one event per key at a time, in publish order."""

from __future__ import annotations

import pytest

from broker_core.errors import SubscriptionMismatch
from broker_core.testing.conformance.base import G2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["OrderingConformance"]


class OrderingConformance(ConformanceBase):
    """Per-key order (invariant 8) in a group subscribed with ``ordered=True``.

    Of each key only the earliest event not DONE or DEAD is leased, and only once it is
    READY: a retry or an expiry holds back its own key and no other, a dead event lets
    its key go on, unkeyed events are ordered with nothing, and a subscription keeps
    the options it was created with.
    """

    async def _keyed(self, harness: Harness, *pairs: tuple[str, str | None]) -> None:
        events = [(event_id, f"body:{event_id}".encode()) for event_id, _ in pairs]
        await harness.transport.publish(T, events, keys=[key for _, key in pairs])

    @pytest.mark.asyncio
    async def test_one_event_per_key_is_leased_at_a_time(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a"))
        first = await harness.claim(G, T, max_count=10)
        assert sorted(m.event_id for m in first) == ["a1", "b1"]
        assert _counts(await tr.stats(T, G)) == (2, 2, 0, 0)  # a2, a3 wait, READY
        assert await harness.claim(G, T, max_count=10) == []
        assert await tr.ack([m.receipt for m in first if m.event_id == "a1"]) == [True]
        assert await harness.claim_ids(G, T) == ["a2"]

    @pytest.mark.asyncio
    async def test_a_retry_holds_back_only_its_own_key(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b"))
        ms = {m.event_id: m for m in await harness.claim(G, T, max_count=10)}
        assert sorted(ms) == ["a1", "b1"]
        assert await tr.nack(ms["a1"].receipt, delay=5.5, error="E")
        assert await tr.ack([ms["b1"].receipt]) == [True]
        # b goes on; a waits for its retry: a2 must not overtake a1 (bullmq#2774).
        assert await harness.claim_ids(G, T) == ["b2"]
        assert await harness.claim(G, T, max_count=10) == []
        harness.clock.advance(6)
        [retry] = await harness.claim(G, T, max_count=10)
        assert (retry.event_id, retry.attempt) == ("a1", 2)
        assert await tr.ack([retry.receipt]) == [True]
        assert await harness.claim_ids(G, T) == ["a2"]

    @pytest.mark.asyncio
    async def test_an_expired_event_comes_back_before_its_key(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"))
        await harness.claim(G, T, max_count=10, lease=1.5)  # a1; its consumer dies
        harness.clock.advance(2)
        [again] = await harness.claim(G, T, max_count=10)
        assert (again.event_id, again.attempt) == ("a1", 2)
        assert await harness.claim(G, T, max_count=10) == []
        assert await tr.release([again.receipt]) == [True]
        [third] = await harness.claim(G, T, max_count=10)
        assert (third.event_id, third.attempt) == ("a1", 2)

    @pytest.mark.asyncio
    async def test_a_dead_event_lets_its_key_go_on(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"), ("a3", "a"))
        [m] = await harness.claim(G, T, max_count=10)
        assert await tr.kill(m.receipt, reason="handler")
        [m] = await harness.claim(G, T, max_count=10, lease=1.5, max_attempts=1)
        assert m.event_id == "a2"
        harness.clock.advance(2)  # a2 expires with its one attempt used
        # The claim buries a2 and, its key free again, hands out a3.
        got = await harness.claim(G, T, max_count=10, max_attempts=1)
        assert [m.event_id for m in got] == ["a3"]
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["a1", "a2"]

    @pytest.mark.asyncio
    async def test_unkeyed_events_are_ordered_with_nothing(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("x1", None), ("a2", "a"), ("x2", None))
        assert sorted(await harness.claim_ids(G, T)) == ["a1", "x1", "x2"]

    @pytest.mark.asyncio
    async def test_a_replayed_event_joins_the_back_of_its_key(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"))
        [m] = await harness.claim(G, T)
        assert await tr.kill(m.receipt, reason="handler")
        [a2] = await harness.claim(G, T)
        assert await tr.replay_dead(T, G) == 1
        assert await harness.claim(G, T, max_count=10) == []  # a2 still holds the key
        assert await tr.ack([a2.receipt]) == [True]
        [m] = await harness.claim(G, T, max_count=10)
        assert (m.event_id, m.attempt) == ("a1", 1)

    @pytest.mark.asyncio
    async def test_a_group_that_is_not_ordered_ignores_keys(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"))
        assert await harness.claim_ids(G, T) == ["a1", "a2"]
        assert await harness.claim_ids(G2, T) == ["a1"]

    @pytest.mark.asyncio
    async def test_a_subscription_keeps_the_options_it_was_created_with(
        self, harness: Harness
    ) -> None:
        tr = harness.transport
        await tr.subscribe(T, G, ordered=True)
        await tr.subscribe(T, G)  # no options: kept
        await tr.subscribe(T, G, ordered=True)
        with pytest.raises(SubscriptionMismatch, match="ordered=True"):
            await tr.subscribe(T, G, ordered=False)
        await tr.subscribe(T, G2)
        with pytest.raises(SubscriptionMismatch, match="ordered=False"):
            await tr.subscribe(T, G2, ordered=True)
        await self._keyed(harness, ("a1", "a"), ("a2", "a"))
        assert await harness.claim_ids(G, T) == ["a1"]  # still ordered
        assert await harness.claim_ids(G2, T) == ["a1", "a2"]
