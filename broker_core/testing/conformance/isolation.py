"""Conformance of isolation: an event whose lease expired is handed out alone."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["IsolationConformance"]


class IsolationConformance(ConformanceBase):
    """No collateral charge (invariant 11): a suspect goes out alone.

    An event whose last lease expired may have crashed its consumer. It comes out as the
    only message of a claim, marked ``isolated``; a claim that took other events stops
    before it; the mark survives a release and ends with a nack or a replay.
    """

    async def _expire(self, harness: Harness, *event_ids: str) -> None:
        """Lease ``event_ids`` (at the head of T's queue) and let the leases expire."""
        got = await harness.claim(G, T, max_count=len(event_ids), lease=1.5)
        assert [m.event_id for m in got] == list(event_ids)
        harness.clock.advance(2)

    @pytest.mark.asyncio
    async def test_first_deliveries_are_not_isolated(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        ms = await harness.claim(G, T, max_count=5)
        assert [(m.event_id, m.isolated) for m in ms] == [("e1", False), ("e2", False)]

    @pytest.mark.asyncio
    async def test_an_expired_event_comes_out_alone(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await self._expire(harness, "e1")
        [m] = await harness.claim(G, T, max_count=5)
        assert (m.event_id, m.attempt, m.isolated) == ("e1", 2, True)
        assert _counts(await harness.transport.stats(T, G)) == (2, 1, 0, 0)

    @pytest.mark.asyncio
    async def test_a_claim_stops_before_an_expired_event(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await self._expire(harness, "e1")
        [m] = await harness.claim(G, T)
        assert await tr.nack(m.receipt)  # e1 is ordinary again, at the front
        await self._expire(harness, "e1", "e2")
        # e1 and e2 both expired: whichever comes first comes alone, then the other.
        [x] = await harness.claim(G, T, max_count=5)
        [y] = await harness.claim(G, T, max_count=5)
        assert {x.event_id, y.event_id} == {"e1", "e2"} and x.isolated and y.isolated
        [z] = await harness.claim(G, T, max_count=5)
        assert (z.event_id, z.isolated) == ("e3", False)

    @pytest.mark.asyncio
    async def test_only_the_expired_event_stops_a_claim(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3", "e4")
        a, b = await harness.claim(G, T, max_count=2, lease=1.5)
        assert await tr.nack(b.receipt)  # b is READY at the front, not suspect
        harness.clock.advance(2)  # a expires and joins it at the front
        first = await harness.claim(G, T, max_count=5)
        rest = await harness.claim(G, T, max_count=5)
        got = [(m.event_id, m.isolated) for m in first + rest]
        # e2 may come before e1 (and with nothing else), but e1 never comes with others.
        assert ("e1", True) in got and ("e2", False) in got
        assert [m.event_id for m in first] == ["e1"] or [m.event_id for m in rest] == ["e1"]
        assert a.event_id == "e1"

    @pytest.mark.asyncio
    async def test_a_claim_of_several_topics_hands_an_expired_event_alone(
        self, harness: Harness
    ) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T2, G)
        await harness.publish(T, "e1")
        await harness.publish(T2, "p1", "p2")
        await self._expire(harness, "e1")
        seen = []
        for _ in range(3):
            ms = await harness.claim(G, [T, T2], max_count=5)
            assert not any(m.isolated for m in ms) or len(ms) == 1, ms
            seen += [(m.event_id, m.isolated) for m in ms]
        assert sorted(seen) == [("e1", True), ("p1", False), ("p2", False)]

    @pytest.mark.asyncio
    async def test_release_keeps_the_mark_and_nack_ends_it(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await self._expire(harness, "e1")
        [m] = await harness.claim(G, T, max_count=5)
        assert await tr.release([m.receipt]) == [True]
        [m] = await harness.claim(G, T, max_count=5)
        assert (m.event_id, m.attempt, m.isolated) == ("e1", 2, True)
        assert await tr.nack(m.receipt)
        ms = await harness.claim(G, T, max_count=5)
        assert [(m.event_id, m.attempt, m.isolated) for m in ms] == [
            ("e1", 3, False),
            ("e2", 1, False),
        ]

    @pytest.mark.asyncio
    async def test_replay_ends_the_mark(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await self._expire(harness, "e1")
        [m] = await harness.claim(G, T, max_count=5)
        assert await tr.kill(m.receipt, reason="handler")
        assert await tr.replay_dead(T, G) == 1
        ms = await harness.claim(G, T, max_count=5)
        assert [(m.event_id, m.attempt, m.isolated) for m in ms] == [
            ("e2", 1, False),
            ("e1", 1, False),
        ]

    @pytest.mark.asyncio
    async def test_an_exhausted_expired_event_dies_instead(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await harness.claim(G, T, lease=1.5, max_attempts=1)
        harness.clock.advance(2)
        ms = await harness.claim(G, T, max_count=5, max_attempts=1)
        assert [(m.event_id, m.isolated) for m in ms] == [("e2", False)]
        [dead] = await tr.dead_letters(T, G)
        assert (dead.event_id, dead.reason, dead.attempts) == ("e1", "max_attempts", 1)
