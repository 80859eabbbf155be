"""Conformance of partitioned topics: routing, order per partition, refused changes."""

from __future__ import annotations

import math

import pytest

from broker_core.errors import PartitionChangeRefused
from broker_core.partitions import MAX_PARTITIONS, partition_of
from broker_core.testing.conformance.base import G2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness, body_of

__all__ = ["PartitionConformance"]

P = 4
"""The partition count of the tests: small, and the keys below reach every partition."""
KEYS = [f"order-{n}" for n in range(8)]


def _keyed(count: int) -> tuple[list[tuple[str, bytes]], list[str | None]]:
    """``count`` events e0, e1, ... with keys cycling through KEYS (every fifth unkeyed)."""
    events = [(f"e{n}", body_of(f"e{n}")) for n in range(count)]
    keys: list[str | None] = [None if n % 5 == 4 else KEYS[n % len(KEYS)] for n in range(count)]
    return events, keys


def _pairs(events: list[tuple[str, bytes]], keys: list[str | None]) -> list[tuple[str, str | None]]:
    """(id, key) of each published event, as :meth:`PartitionConformance._drain` reports them."""
    return [(i, k) for (i, _), k in zip(events, keys, strict=True)]


class PartitionConformance(ConformanceBase):
    """``configure_topic(partitions=)`` (invariant 12): every event reaches every group
    once, order holds within each partition and so per key, and the count changes only
    while the topic holds no event.

    A store may keep partitions apart or in one queue; these tests hold for both.
    """

    async def _drain(
        self, harness: Harness, group: str, *, max_count: int = 100
    ) -> list[tuple[str, str | None]]:
        """Claim and ack everything ``group`` has of T: (id, key) in claim order."""
        seen: list[tuple[str, str | None]] = []
        for _ in range(200):
            ms = await harness.claim(group, T, max_count=max_count)
            if not ms:
                return seen
            assert await harness.transport.ack([m.receipt for m in ms]) == [True] * len(ms)
            seen += [(m.event_id, m.key) for m in ms]
        raise AssertionError(f"{group} never ran out of events")

    @pytest.mark.asyncio
    async def test_a_topic_has_one_partition_until_configured(self, harness: Harness) -> None:
        tr = harness.transport
        assert (await tr.topic_stats(T)).partitions == 1
        await tr.configure_topic(T, partitions=P)
        assert (await tr.topic_stats(T)).partitions == P
        # None keeps the count while the retention changes.
        await tr.configure_topic(T, max_age=60.0)
        stats = await tr.topic_stats(T)
        assert (stats.partitions, stats.max_age) == (P, 60.0)

    @pytest.mark.asyncio
    async def test_a_count_alone_keeps_the_retention(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=3600.0, max_events=50)
        await tr.configure_topic(T, partitions=P)
        stats = await tr.topic_stats(T)
        assert (stats.max_age, stats.max_events, stats.partitions) == (3600.0, 50, P)
        await tr.configure_topic(T)  # no count: the retention goes, the count stays
        stats = await tr.topic_stats(T)
        assert (stats.max_age, stats.max_events, stats.partitions) == (None, None, P)

    @pytest.mark.asyncio
    async def test_a_change_forgets_the_dedup_windows(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        events, keys = _keyed(3)
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 3
        await self._drain(harness, G)
        await tr.configure_topic(T, partitions=1)  # the same count: windows kept
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 0
        await tr.configure_topic(T, partitions=P)
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 3
        await self._drain(harness, G)
        await tr.configure_topic(T, partitions=P)
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 0

    @pytest.mark.asyncio
    async def test_every_event_reaches_every_group_once(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)  # subscribed before the change: it stays subscribed
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G2)
        assert await tr.groups(T) == sorted([G, G2])
        events, keys = _keyed(40)
        assert await tr.publish(T, events, keys=keys) == 80
        assert _counts(await tr.stats(T, G)) == (40, 0, 0, 0)
        for group in (G, G2):
            seen = await self._drain(harness, group, max_count=7)
            assert sorted(seen) == sorted(_pairs(events, keys))
            assert _counts(await tr.stats(T, group)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_order_holds_within_each_partition(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G)
        events, keys = _keyed(40)
        await tr.publish(T, events[:25], keys=keys[:25])
        await tr.publish(T, events[25:], keys=keys[25:])
        seen = await self._drain(harness, G, max_count=3)
        published = _pairs(events, keys)
        assert sorted(seen) == sorted(published)
        partitions = {partition_of(i, k, P) for i, k in published}
        assert len(partitions) == P, "the test's events should reach every partition"
        for p in partitions:
            mine = [e for e in published if partition_of(*e, P) == p]
            assert [e for e in seen if partition_of(*e, P) == p] == mine, f"partition {p}"

    @pytest.mark.asyncio
    async def test_an_ordered_group_keeps_each_keys_order(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G, ordered=True)
        events, keys = _keyed(40)
        await tr.publish(T, events, keys=keys)
        first = await harness.claim(G, T, max_count=100)
        # One event per key at a time: the first of each key, and the unkeyed ones.
        held = [m.key for m in first if m.key is not None]
        assert sorted(held) == sorted(set(held)) == sorted(KEYS)
        await tr.release([m.receipt for m in first])
        seen = [i for i, _ in await self._drain(harness, G, max_count=5)]
        for key in KEYS:
            mine = [i for (i, _), k in zip(events, keys, strict=True) if k == key]
            assert [i for i in seen if i in mine] == mine, key

    @pytest.mark.asyncio
    async def test_a_republished_event_is_skipped(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G)
        events, keys = _keyed(10)
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 10
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 0  # held
        await self._drain(harness, G)
        assert await tr.publish(T, events, keys=keys, dedup_window=60.0) == 0  # window
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_dead_letters_span_the_partitions(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G)
        events, keys = _keyed(12)
        await tr.publish(T, events, keys=keys)
        ms = await harness.claim(G, T, max_count=12, lease=60.0)
        assert len(ms) == 12
        for m in ms:
            harness.clock.advance(1)
            assert await tr.kill(m.receipt, reason="handler", error="ValueError: no")
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 12)
        letters = await tr.dead_letters(T, G)
        assert [d.event_id for d in letters] == [m.event_id for m in ms]  # oldest death first
        page = await tr.dead_letters(T, G, limit=3, offset=4)
        assert [d.event_id for d in page] == [m.event_id for m in ms[4:7]]
        assert await tr.replay_dead(T, G, [ms[0].event_id, ms[5].event_id]) == 2
        assert await tr.purge_dead(T, G) == 10
        assert _counts(await tr.stats(T, G)) == (2, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_history_spans_the_partitions(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_age=3600.0, partitions=P)
        events, keys = _keyed(20)
        await tr.publish(T, events, keys=keys)  # retained with no group yet
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.partitions) == (20, P)
        await tr.subscribe(T, G, ordered=True, history=math.inf)
        seen = await self._drain(harness, G)
        assert sorted(seen) == sorted(_pairs(events, keys))
        assert await tr.rewind(T, G, history=math.inf, dry_run=True) == 20
        assert await tr.rewind(T, G, history=math.inf) == 20
        assert _counts(await tr.stats(T, G)) == (20, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_a_change_is_refused_while_a_group_holds_events(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        with pytest.raises(PartitionChangeRefused, match="group 'billing' holds events"):
            await tr.configure_topic(T, max_age=60.0, partitions=P)
        stats = await tr.topic_stats(T)
        assert (stats.partitions, stats.max_age) == (1, None), "a refused call changes nothing"
        assert await tr.ack([m.receipt]) == [True]
        await tr.configure_topic(T, partitions=P)  # done everywhere: the change goes through
        assert (await tr.topic_stats(T)).partitions == P
        await harness.publish(T, "e2")
        assert await harness.claim_ids(G, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_a_change_is_refused_while_dead_letters_remain(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, partitions=P)
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        await tr.kill(m.receipt, reason="handler")
        with pytest.raises(PartitionChangeRefused):
            await tr.configure_topic(T, partitions=1)
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["e1"]
        assert await tr.purge_dead(T, G) == 1
        await tr.configure_topic(T, partitions=1)
        assert (await tr.topic_stats(T)).partitions == 1

    @pytest.mark.asyncio
    async def test_a_change_is_refused_while_history_is_retained(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.configure_topic(T, max_events=10)
        await harness.publish(T, "e1")
        with pytest.raises(PartitionChangeRefused, match="history retains events"):
            await tr.configure_topic(T, partitions=P)
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.max_events, stats.partitions) == (1, 10, 1)
        await tr.configure_topic(T)  # no retention: the history goes
        await tr.configure_topic(T, max_events=10, partitions=P)
        stats = await tr.topic_stats(T)
        assert (stats.retained, stats.max_events, stats.partitions) == (0, 10, P)

    @pytest.mark.asyncio
    async def test_an_unsubscribed_group_holds_nothing(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        assert await tr.unsubscribe(T, G)
        await tr.configure_topic(T, partitions=P)
        assert (await tr.topic_stats(T)).partitions == P

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", [0, -1, MAX_PARTITIONS + 1, 1.5, True, "4"])
    async def test_a_bad_count_is_refused(self, harness: Harness, bad: object) -> None:
        tr = harness.transport
        with pytest.raises(ValueError, match="partitions"):
            await tr.configure_topic(T, max_age=60.0, partitions=bad)  # type: ignore[arg-type]
        stats = await tr.topic_stats(T)
        assert (stats.partitions, stats.max_age) == (1, None)
