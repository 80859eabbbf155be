"""Conformance of publish: who receives an event, in what order, and when an id repeats."""

from __future__ import annotations

import pytest

from broker_core.errors import InvalidName
from broker_core.testing.conformance.base import G2, T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness, body_of

__all__ = ["PublishConformance"]


class PublishConformance(ConformanceBase):
    """The publish transition (nothing -> READY), idempotent and duplicate-free publish.

    Covers fan-out to the groups subscribed at publish time (and only those), order of
    first deliveries (invariant 5), the fields of a first delivery, the lifetime of an
    event id (a topic skips an id it still holds, until every group is done with it or
    its dead letter is purged), the dedup window (invariant 10): an id published
    within it is skipped even once every group is done with it, and ordering keys, handed
    out with every delivery of their event.
    """

    # -- publish ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_publish_to_no_subscriber_returns_zero(self, harness: Harness) -> None:
        assert await harness.publish(T, "e1", "e2") == 0
        await harness.transport.subscribe(T, G)
        assert await harness.claim(G, T) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_publish_returns_the_copies_enqueued(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        await harness.transport.subscribe(T2, G)
        assert await harness.publish(T, "e1") == 2
        assert await harness.publish(T2, "e2") == 1
        assert await harness.publish(T, "e3", "e4", "e5") == 6
        assert await harness.publish(T, "e1", "e6") == 2  # e1 is held: skipped
        assert await harness.transport.publish(T, []) == 0

    @pytest.mark.asyncio
    async def test_events_before_subscription_do_not_reach_group(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        await harness.transport.subscribe(T, G2)
        await harness.publish(T, "e2")
        assert await harness.claim_ids(G, T) == ["e1", "e2"]
        assert await harness.claim_ids(G2, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_fifo_first_deliveries(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        ids = [f"e{i:02d}" for i in range(20)]
        await harness.publish(T, *ids[:7])
        await harness.publish(T, *ids[7:])
        got: list[str] = []
        for _ in range(7):  # 20 events in batches of 3
            got += await harness.claim_ids(G, T, max_count=3)
        assert got == ids

    @pytest.mark.asyncio
    async def test_message_fields(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        now = harness.clock.now()
        [msg] = await harness.claim(G, T, lease=7.5)
        assert (msg.topic, msg.group, msg.event_id) == (T, G, "e1")
        assert msg.receipt.topic == T and msg.receipt.group == G and msg.receipt.event_id == "e1"
        assert msg.body == body_of("e1")
        assert msg.attempt == 1
        assert msg.lease_deadline == pytest.approx(now + 7.5)

    @pytest.mark.asyncio
    async def test_publish_is_atomic_and_ordered_per_call(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("b", b"1"), ("a", b"2"), ("c", b"3")])
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("b", b"1"), ("a", b"2"), ("c", b"3")]

    # -- idempotent publish and the lifetime of bodies ------------------------------------

    @pytest.mark.asyncio
    async def test_publish_skips_an_id_the_topic_holds(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"first")])
        assert await harness.transport.publish(T, [("e1", b"second"), ("e2", b"x")]) == 1
        assert await harness.transport.publish(T, [("e1", b"second")]) == 0
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("e1", b"first"), ("e2", b"x")]
        # still held while leased
        await harness.transport.publish(T, [("e1", b"third")])
        assert await harness.claim(G, T, max_count=10) == []

    @pytest.mark.asyncio
    async def test_duplicate_ids_within_one_publish(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"a"), ("e1", b"b")])
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("e1", b"a")]

    @pytest.mark.asyncio
    async def test_id_is_held_until_every_group_is_done(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        await harness.transport.publish(T, [("e1", b"old")])
        [m1] = await harness.claim(G, T)
        assert await harness.transport.ack([m1.receipt]) == [True]
        await harness.transport.publish(T, [("e1", b"new")])  # G2 still holds it: skipped
        assert await harness.claim(G, T) == []
        [m2] = await harness.claim(G2, T)
        assert m2.body == b"old"
        assert await harness.transport.ack([m2.receipt]) == [True]
        # every group is done: the body is gone and the id is new again
        await harness.transport.publish(T, [("e1", b"new")])
        for group in (G, G2):
            [m] = await harness.claim(group, T)
            assert (m.event_id, m.body, m.attempt) == ("e1", b"new", 1)

    @pytest.mark.asyncio
    async def test_dead_event_is_held_until_purged(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"old")])
        [m] = await harness.claim(G, T)
        assert await harness.transport.kill(m.receipt, reason="handler")
        await harness.transport.publish(T, [("e1", b"new")])
        assert await harness.claim(G, T) == []
        assert await harness.transport.purge_dead(T, G) == 1
        await harness.transport.publish(T, [("e1", b"new")])
        [again] = await harness.claim(G, T)
        assert (again.body, again.attempt) == (b"new", 1)

    # -- duplicate-free publish: the dedup window --------------------------------------

    @pytest.mark.asyncio
    async def test_an_id_within_its_window_is_skipped_after_every_ack(
        self, harness: Harness
    ) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        assert await tr.publish(T, [("e1", b"first")], dedup_window=10.5) == 2
        for group in (G, G2):
            [m] = await harness.claim(group, T)
            assert await tr.ack([m.receipt]) == [True]
        harness.clock.advance(10)  # every group is done, and the body is freed
        assert await tr.publish(T, [("e1", b"again"), ("e2", b"x")], dedup_window=10.5) == 2
        assert await harness.claim_ids(G, T) == ["e2"]
        assert await harness.claim_ids(G2, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_an_id_is_new_again_once_its_window_ends(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.publish(T, [("e1", b"first")], dedup_window=5.5)
        [m] = await harness.claim(G, T)
        assert await tr.ack([m.receipt]) == [True]
        harness.clock.advance(3)
        # A skipped duplicate does not extend the window.
        assert await tr.publish(T, [("e1", b"dup")], dedup_window=5.5) == 0
        harness.clock.advance(3)
        assert await tr.publish(T, [("e1", b"later")], dedup_window=5.5) == 1
        [m] = await harness.claim(G, T)
        assert (m.body, m.attempt) == (b"later", 1)

    @pytest.mark.asyncio
    async def test_without_a_window_only_held_ids_are_skipped(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.publish(T, [("e1", b"first")])
        [m] = await harness.claim(G, T)
        assert await tr.ack([m.receipt]) == [True]
        assert await tr.publish(T, [("e1", b"again")]) == 1

    @pytest.mark.asyncio
    async def test_the_window_holds_through_death_and_purge(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.publish(T, [("e1", b"first")], dedup_window=20.5)
        [m] = await harness.claim(G, T)
        assert await tr.kill(m.receipt, reason="handler")
        assert await tr.purge_dead(T, G) == 1
        assert await tr.publish(T, [("e1", b"again")], dedup_window=20.5) == 0
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_many_ended_windows_are_forgotten_while_publishing(
        self, harness: Harness
    ) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        ids = [f"e{i:04d}" for i in range(600)]
        await tr.publish(T, [(i, b"x") for i in ids], dedup_window=1.5)
        ms = await harness.claim(G, T, max_count=600)
        assert all(await tr.ack([m.receipt for m in ms]))
        harness.clock.advance(2)
        # Every window ended: each id is new again, however many were recorded.
        for start in range(0, 600, 100):
            batch = [(i, b"y") for i in ids[start : start + 100]]
            assert await tr.publish(T, batch, dedup_window=1.5) == 100
        assert _counts(await tr.stats(T, G)) == (600, 0, 0, 0)

    # -- ordering keys -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_every_delivery_carries_its_ordering_key(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        events = [("e1", b"a"), ("e2", b"b"), ("e3", b"c")]
        assert await tr.publish(T, events, keys=["order/42", None, "ключ"]) == 3
        ms = await harness.claim(G, T, max_count=3, lease=1.5)
        assert [(m.event_id, m.key) for m in ms] == [
            ("e1", "order/42"),
            ("e2", None),
            ("e3", "ключ"),
        ]
        assert await tr.nack(ms[0].receipt)
        harness.clock.advance(2)  # e2 and e3 expire: redeliveries keep their keys too
        again = []
        for _ in range(3):
            again += await harness.claim(G, T, max_count=3)
        assert sorted((m.event_id, m.key) for m in again) == [
            ("e1", "order/42"),
            ("e2", None),
            ("e3", "ключ"),
        ]

    @pytest.mark.asyncio
    async def test_bad_ordering_keys_are_refused(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        for bad in ("", "a\x00b", "line\nbreak", "x" * 257, "\udcff"):
            with pytest.raises(InvalidName):
                await tr.publish(T, [("e1", b"x")], keys=[bad])
        with pytest.raises(ValueError, match="keys"):
            await tr.publish(T, [("e1", b"x"), ("e2", b"y")], keys=["k"])
        # One bad key refuses the whole call: nothing of it is stored.
        with pytest.raises(InvalidName):
            await tr.publish(T, [("e1", b"x"), ("e2", b"y")], keys=["k", "bad\x00"])
        with pytest.raises(ValueError, match="dedup_window"):
            await tr.publish(T, [("e1", b"x")], dedup_window=-1)
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)
        assert await tr.publish(T, [("e1", b"x"), ("e2", b"y")], keys=["k", "k"]) == 2

    # -- the transport's own body limit ------------------------------------------------

    @pytest.mark.asyncio
    async def test_the_body_limit_it_declares_is_the_one_it_keeps(self, harness: Harness) -> None:
        # The Broker refuses larger events before publishing, trusting this figure.
        tr = harness.transport
        limit = tr.max_body_bytes
        assert limit is None or (isinstance(limit, int) and limit > 0)
        if limit is not None:
            await tr.subscribe(T, G)
            assert await tr.publish(T, [("e1", b"x" * limit)]) == 1
            [m] = await harness.claim(G, T)
            assert len(m.body) == limit
