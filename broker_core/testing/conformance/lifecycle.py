"""Conformance of connect, an empty store, subscriptions and the names they list."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import G2, T2, ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness

__all__ = ["LifecycleConformance"]


class LifecycleConformance(ConformanceBase):
    """Lifecycle and subscriptions, before any transition: connect, a new store, subscribe.

    Covers connect being idempotent, a new store being empty to every query, subscribe
    being idempotent and listed by ``groups`` and ``topics``, and ``stats`` naming its
    topic and group.
    """

    @pytest.mark.asyncio
    async def test_connect_is_idempotent(self, harness: Harness) -> None:
        await harness.transport.connect()
        await harness.transport.subscribe(T, G)
        assert await harness.transport.groups(T) == [G]

    @pytest.mark.asyncio
    async def test_empty_store(self, harness: Harness) -> None:
        assert await harness.transport.topics() == []
        assert await harness.transport.groups(T) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        assert await harness.transport.dead_letters(T, G) == []
        assert await harness.claim(G, T) == []

    @pytest.mark.asyncio
    async def test_subscribe_lists_groups_and_topics(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G2)
        await tr.subscribe(T, G)
        await tr.subscribe(T, G)  # idempotent
        await tr.subscribe(T2, G)
        assert await tr.groups(T) == [G, G2]
        assert await tr.groups(T2) == [G]
        assert await tr.topics() == sorted([T, T2])

    @pytest.mark.asyncio
    async def test_stats_names_its_topic_and_group(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        stats = await harness.transport.stats(T, G)
        assert (stats.topic, stats.group) == (T, G)
        assert _counts(stats) == (0, 0, 0, 0)
