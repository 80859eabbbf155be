"""Conformance of retention and history: what a topic keeps, subscribing from it, rewind."""

from __future__ import annotations

import math

import pytest

from broker_core.testing.conformance.base import G2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["HistoryConformance"]


class HistoryConformance(ConformanceBase):
    """Retention (``configure_topic``), history for new groups and ``rewind`` (invariant 9).

    A topic with retention keeps its events readable after every group is done with
    them, within ``max_age`` and the newest ``max_events``; a new group subscribing with
    ``history`` gets them, oldest first, before later events; a rewind delivers them to a
    group again, leaving out what it holds.
    """

    async def _consume(self, harness: Harness, group: str) -> list[str]:
        """Claim and ack everything ``group`` has of T; the ids in claim order."""
        ids: list[str] = []
        for _ in range(50):
            ms = await harness.claim(group, T, max_count=100)
            if not ms:
                return ids
            assert await harness.transport.ack([m.receipt for m in ms]) == [True] * len(ms)
            ids += [m.event_id for m in ms]
        raise AssertionError(f"{group} never ran out of events")

    @pytest.mark.asyncio
    async def test_a_topic_without_retention_keeps_no_history(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        await self._consume(harness, G)
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.oldest_age, stats.retains) == (0, None, False)
        await tr.subscribe(T, G2, history=math.inf)
        assert _counts(await tr.stats(T, G2)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_history_then_live_events_none_lost(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=3600.0)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        harness.clock.advance(1)
        await harness.publish(T, "e3")
        assert await self._consume(harness, G) == ["e1", "e2", "e3"]
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.max_age, stats.max_events) == (3, 3600.0, None)
        assert stats.oldest_age == pytest.approx(1.0, abs=1e-3)
        await tr.subscribe(T, G2, history=math.inf)
        assert await tr.groups(T) == sorted([G, G2])
        assert await harness.publish(T, "e4") == 2
        ms = await harness.claim(G2, T, max_count=10)
        assert [m.event_id for m in ms] == ["e1", "e2", "e3", "e4"]
        assert [m.body for m in ms] == [f"body:e{i}".encode() for i in range(1, 5)]
        assert [m.attempt for m in ms] == [1, 1, 1, 1]

    @pytest.mark.asyncio
    async def test_history_starts_at_the_given_age(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=3600.0)
        await harness.publish(T, "old")  # retained even with no group yet
        harness.clock.advance(10)
        await harness.publish(T, "new")
        await tr.subscribe(T, G, history=5.0)
        assert await harness.claim_ids(G, T) == ["new"]
        await tr.subscribe(T, G2, history=math.inf)
        assert await harness.claim_ids(G2, T) == ["old", "new"]

    @pytest.mark.asyncio
    async def test_history_is_only_for_a_new_subscription(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=10)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        await self._consume(harness, G)
        await tr.subscribe(T, G, history=math.inf)  # as every restart of a service does
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_retention_by_count_keeps_the_newest(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=2)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await self._consume(harness, G)
        assert (await tr.topic_stats(T)).retained == 2
        await tr.subscribe(T, G2, history=math.inf)
        assert await harness.claim_ids(G2, T) == ["e2", "e3"]
        # e1 is no longer held by anyone: its id may be published anew.
        assert await harness.publish(T, "e1") == 2

    @pytest.mark.asyncio
    async def test_retention_by_age_ages_out(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=5.0)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        harness.clock.advance(3)
        await harness.publish(T, "e2")
        await self._consume(harness, G)
        assert await harness.publish(T, "e1") == 0  # the history still holds its id
        harness.clock.advance(3)
        assert (await tr.topic_stats(T)).retained == 1
        assert await harness.publish(T, "e1") == 1  # aged out: a new event
        harness.clock.advance(10)
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.oldest_age) == (0, None)

    @pytest.mark.asyncio
    async def test_removing_retention_drops_the_history(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=5)
        await harness.publish(T, "e1")
        await tr.configure_topic(T)
        stats = await tr.topic_stats(T)
        assert (stats.retains, stats.retained) == (False, 0)
        await tr.subscribe(T, G, history=math.inf)
        assert await harness.claim_ids(G, T) == []

    @pytest.mark.asyncio
    async def test_history_keeps_keys_and_their_order(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=100)
        events = [("a1", b"1"), ("b1", b"2"), ("a2", b"3")]
        await tr.publish(T, events, keys=["a", "b", "a"])
        await tr.subscribe(T, G, ordered=True, history=math.inf)
        await tr.publish(T, [("a3", b"4")], keys=["a"])
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.key) for m in ms] == [("a1", "a"), ("b1", "b")]
        assert await tr.ack([m.receipt for m in ms]) == [True, True]
        assert await harness.claim_ids(G, T) == ["a2"]

    @pytest.mark.asyncio
    async def test_rewind_delivers_the_history_again(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=100)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        assert await self._consume(harness, G) == ["e1", "e2", "e3"]
        assert await tr.rewind(T, G, history=math.inf) == 3
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 1), ("e2", 1), ("e3", 1)]
        assert _counts(await tr.stats(T, G2)) == (0, 0, 0, 0)  # no other group is touched

    @pytest.mark.asyncio
    async def test_rewind_skips_events_the_group_holds(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=100)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        [m] = await harness.claim(G, T)
        assert await tr.ack([m.receipt]) == [True]
        [leased] = await harness.claim(G, T)  # e2 LEASED, e3 READY: both held
        assert await tr.rewind(T, G, history=math.inf, dry_run=True) == 1
        assert _counts(await tr.stats(T, G)) == (1, 1, 0, 0)  # a dry run changes nothing
        assert await tr.rewind(T, G, history=math.inf) == 1
        assert await harness.claim_ids(G, T) == ["e3", "e1"]
        assert await tr.ack([leased.receipt]) == [True]

    @pytest.mark.asyncio
    async def test_rewind_refuses_a_group_not_subscribed(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=100)
        await harness.publish(T, "e1")
        for dry_run in (True, False):
            with pytest.raises(ValueError, match="subscribe"):
                await tr.rewind(T, G, history=math.inf, dry_run=dry_run)
        assert await tr.groups(T) == []

    @pytest.mark.asyncio
    async def test_bad_retention_is_refused(self, harness: Harness) -> None:
        tr = harness.transport
        for bad in ({"max_age": 0.0}, {"max_age": -1.0}, {"max_age": math.inf}, {"max_events": 0}):
            with pytest.raises(ValueError):
                await tr.configure_topic(T, **bad)
        with pytest.raises(ValueError):
            await tr.subscribe(T, G, history=-1.0)
        await tr.subscribe(T, G2)
        with pytest.raises(ValueError):
            await tr.rewind(T, G2, history=None)  # type: ignore[arg-type]
        await tr.unsubscribe(T, G2)
        assert (await tr.topic_stats(T)).retains is False
        assert await tr.groups(T) == []
