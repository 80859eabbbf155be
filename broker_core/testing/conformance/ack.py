"""Conformance of ack, and of groups that share a topic without sharing anything else."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import G2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness, body_of
from broker_core.transport import Receipt

__all__ = ["AckConformance"]


class AckConformance(ConformanceBase):
    """The ack transition (LEASED -> DONE), fan-out and isolation (invariant 7).

    Covers ack answering per receipt and being final, each group getting its own copy of
    an event, and what one group does (ack, nack, kill, expiry, replay, purge, its
    receipts) never changing another's.
    """

    # -- ack ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_ack_marks_done(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        msgs = await harness.claim(G, T, max_count=3)
        assert await harness.transport.ack([m.receipt for m in msgs[:2]]) == [True, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 1, 0, 0)
        assert await harness.transport.ack([msgs[0].receipt, msgs[2].receipt]) == [False, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        harness.clock.advance(100)
        assert await harness.claim(G, T) == []
        assert await harness.transport.ack([]) == []

    # -- fan-out and isolation ------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_fan_out_gives_each_group_its_own_copy(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        assert await harness.publish(T, "e1", "e2") == 4
        ms = await harness.claim(G, T, max_count=10)
        assert [m.event_id for m in ms] == ["e1", "e2"]
        assert await harness.transport.ack([m.receipt for m in ms]) == [True, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        assert _counts(await harness.transport.stats(T, G2)) == (2, 0, 0, 0)
        m2 = await harness.claim(G2, T, max_count=10)
        assert [(m.event_id, m.attempt, m.body) for m in m2] == [
            ("e1", 1, body_of("e1")),
            ("e2", 1, body_of("e2")),
        ]

    @pytest.mark.asyncio
    async def test_isolation_of_failures(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, _ = await harness.claim(G, T, max_count=3, lease=2.5)
        assert await tr.kill(a.receipt, reason="handler", error="E")
        assert await tr.nack(b.receipt, delay=5.5)
        harness.clock.advance(3)  # c's lease expires in G
        assert _counts(await tr.stats(T, G)) == (1, 0, 1, 1)
        assert _counts(await tr.stats(T, G2)) == (3, 0, 0, 0)
        assert await tr.dead_letters(T, G2) == []
        assert await tr.replay_dead(T, G2) == 0
        assert await tr.purge_dead(T, G2) == 0
        ms = await harness.claim(G2, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 1), ("e2", 1), ("e3", 1)]
        assert len(await tr.dead_letters(T, G)) == 1

    @pytest.mark.asyncio
    async def test_receipt_of_one_group_does_not_act_on_another(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        [m2] = await harness.claim(G2, T)
        forged = Receipt(T, G2, "e1", m.receipt.token)
        if forged != m2.receipt:
            assert await tr.ack([forged]) == [False]
            assert _counts(await tr.stats(T, G2)) == (0, 1, 0, 0)
        assert await tr.ack([m.receipt]) == [True]
        assert _counts(await tr.stats(T, G2)) == (0, 1, 0, 0)

    @pytest.mark.asyncio
    async def test_stats_count_acks_and_publishes_for_rates(self, harness: Harness) -> None:
        """The counters a dashboard draws rates from, where the transport keeps them."""
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1", "e2", "e3")
        await harness.publish(T, "e1")  # a duplicate: not counted
        ms = await harness.claim(G, T, max_count=2)
        assert await tr.ack([m.receipt for m in ms]) == [True, True]
        assert await tr.ack([ms[0].receipt]) == [False]  # stale: not counted
        counted = await tr.stats(T, G)
        if counted.acked is not None:
            assert (counted.acked, (await tr.stats(T, G2)).acked) == (2, 0)
        published = (await tr.topic_stats(T)).published
        assert published in (None, 3)
