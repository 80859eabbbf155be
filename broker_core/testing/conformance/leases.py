"""Conformance of leases: when they expire, how extend moves them, and stale receipts."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness
from broker_core.transport import Receipt

__all__ = ["LeaseConformance"]


class LeaseConformance(ConformanceBase):
    """Lease expiry (LEASED -> READY at the front, attempt counted), extend, and fencing.

    Covers a lease holding exactly until its deadline, expiries noticed by claim alone and
    going before first deliveries (invariant 5), extend lengthening but never shortening
    a lease, and fencing (invariant 3): a receipt that is expired, superseded, finished or forged
    is refused by ack, nack, extend and kill and changes nothing.
    """

    # -- lease expiry ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_lease_holds_until_its_deadline(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await harness.claim(G, T, lease=5.5)
        harness.clock.advance(5)
        assert _counts(await harness.transport.stats(T, G)) == (1, 1, 0, 0)
        assert await harness.claim_ids(G, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_expired_lease_returns_to_front_with_attempt_counted(
        self, harness: Harness
    ) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        assert _counts(await harness.transport.stats(T, G)) == (3, 0, 0, 0)
        [m] = await harness.claim(G, T, max_count=10)  # an expired event comes out alone
        assert (m.event_id, m.attempt, m.isolated) == ("e1", 2, True)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt, m.isolated) for m in ms] == [
            ("e2", 1, False),
            ("e3", 1, False),
        ]

    @pytest.mark.asyncio
    async def test_expiry_is_noticed_by_claim_without_stats(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)

    @pytest.mark.asyncio
    async def test_several_expiries_all_go_before_first_deliveries(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3", "e4")
        await harness.claim(G, T, max_count=2, lease=1.5)
        harness.clock.advance(2)
        # Each expired event comes out alone, and both before the first deliveries.
        [x] = await harness.claim(G, T, max_count=10)
        [y] = await harness.claim(G, T, max_count=10)
        assert sorted((m.event_id, m.attempt, m.isolated) for m in (x, y)) == [
            ("e1", 2, True),
            ("e2", 2, True),
        ]
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e3", 1), ("e4", 1)]

    # -- extend -------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_extend_keeps_the_lease(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(2)
        assert await tr.extend([a.receipt], 5.5) == [True]
        harness.clock.advance(4)  # past the first deadline, before the new one
        assert _counts(await tr.stats(T, G)) == (1, 1, 0, 0)
        assert await harness.claim_ids(G, T) == ["e2"]
        assert await tr.ack([a.receipt]) == [True]

    @pytest.mark.asyncio
    async def test_extended_lease_still_expires(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=2.5)
        assert await tr.extend([a.receipt], 3.5) == [True]
        harness.clock.advance(4)
        assert await tr.ack([a.receipt]) == [False]
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)

    @pytest.mark.asyncio
    async def test_extend_never_shortens(self, harness: Harness) -> None:
        # A consumer's own idea of its lease must never outlive the store's (fencing).
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=20.5)
        assert await tr.extend([a.receipt], 1.5) == [True]
        harness.clock.advance(2)
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await harness.claim(G, T) == []
        harness.clock.advance(19)  # past the original deadline
        assert _counts(await tr.stats(T, G)) == (1, 0, 0, 0)

    # -- fencing ------------------------------------------------------------------------

    async def _assert_all_refused(self, harness: Harness, receipt: Receipt) -> None:
        tr = harness.transport
        assert await tr.ack([receipt]) == [False]
        assert await tr.nack(receipt) is False
        assert await tr.nack(receipt, delay=3.5) is False
        assert await tr.extend([receipt], 50.5) == [False]
        assert await tr.kill(receipt, reason="handler", error="E") is False

    @pytest.mark.asyncio
    async def test_expired_receipt_is_stale_before_anyone_reclaims(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        # Nobody has claimed or looked since it expired: the receipt is stale all the same.
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (2, 0, 0, 0)
        assert await tr.dead_letters(T, G) == []
        assert [(m.event_id, m.attempt) for m in await harness.claim(G, T)] == [("e1", 2)]
        assert [(m.event_id, m.attempt) for m in await harness.claim(G, T)] == [("e2", 1)]

    @pytest.mark.asyncio
    async def test_receipt_is_stale_after_another_consumer_reclaims(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        [b] = await harness.claim(G, T, lease=10.5)
        assert (b.event_id, b.attempt) == ("e1", 2)
        assert b.receipt != a.receipt
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        harness.clock.advance(10)  # b's lease (10.5) was not extended by a's extend
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.ack([b.receipt]) == [True]
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_receipt_of_an_earlier_delivery_is_stale(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        assert await tr.nack(a.receipt)
        [b] = await harness.claim(G, T)
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.extend([b.receipt], 5.5) == [True]

    @pytest.mark.asyncio
    async def test_receipts_of_finished_deliveries_are_stale(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, c = await harness.claim(G, T, max_count=3)
        assert await tr.ack([a.receipt]) == [True]
        assert await tr.nack(b.receipt, delay=30.5)
        assert await tr.kill(c.receipt, reason="handler")
        before = _counts(await tr.stats(T, G))
        for r in (a.receipt, b.receipt, c.receipt):
            await self._assert_all_refused(harness, r)
        assert _counts(await tr.stats(T, G)) == before == (0, 0, 1, 1)

    @pytest.mark.asyncio
    async def test_forged_receipts_are_refused(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        await self._assert_all_refused(harness, Receipt(T, G, "e1", a.receipt.token + "x"))
        await self._assert_all_refused(harness, Receipt(T, G, "nope", a.receipt.token))
        await self._assert_all_refused(harness, Receipt(T2, G, "e1", a.receipt.token))
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.ack([a.receipt]) == [True]

    @pytest.mark.asyncio
    async def test_ack_and_extend_answer_per_receipt(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [old] = await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        [again] = await harness.claim(G, T, max_count=2, lease=5.5)
        [other] = await harness.claim(G, T, max_count=2, lease=5.5)
        assert (again.event_id, other.event_id) == ("e1", "e2")
        receipts = [old.receipt, again.receipt, other.receipt]
        assert await tr.extend(receipts, 9.5) == [False, True, True]
        assert await tr.ack([other.receipt, old.receipt, again.receipt]) == [True, False, True]
