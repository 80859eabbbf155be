"""Partitioned topics through the Broker, the sync API and the CLI, on every store: what
the shared conformance suite (PartitionConformance) does not reach."""

from __future__ import annotations

import asyncio
import zlib
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from broker_core import Broker, Event, PartitionChangeRefused, SyncBroker, partition_of
from broker_core.cli import app
from broker_core.partitions import MAX_PARTITIONS
from broker_postgres.testing import PostgresServer, unique_schema

runner = CliRunner()


class Shipped(Event):
    topic: ClassVar[str | None] = "shipments"
    key_field: ClassVar[str | None] = "order"
    order: str
    step: int


async def test_a_partitioned_topic_keeps_each_keys_order(broker_url: str) -> None:
    async with Broker.from_url(broker_url, group="tracking", concurrency=8) as broker:
        await broker.configure_topic("shipments", partitions=6)
        await broker.subscribe("shipments", ordered=True)
        seen: list[Shipped] = []

        @broker.on(Shipped)
        async def handle(event: Shipped) -> None:
            seen.append(event)

        await broker.publish_many(Shipped(order=f"o{n % 10}", step=n // 10) for n in range(60))
        for _ in range(200):
            if not await broker.pick():
                break
        assert len(seen) == 60
        for order in {e.order for e in seen}:
            assert [e.step for e in seen if e.order == order] == list(range(6)), order
        [stats] = await broker.topic_stats("shipments")
        assert stats.partitions == 6


async def test_a_change_with_events_held_is_refused_and_says_what_to_do(broker_url: str) -> None:
    async with Broker.from_url(broker_url, group="tracking") as broker:
        seen: list[Shipped] = []
        broker.on(Shipped)(seen.append)
        await broker.subscribe("shipments")
        await broker.publish(Shipped(order="o1", step=0))
        with pytest.raises(PartitionChangeRefused) as refused:
            await broker.configure_topic("shipments", partitions=12)
        message = str(refused.value)
        assert "'tracking' holds 1" in message and "partitions=12" in message
        assert "Nothing was changed" in message
        [stats] = await broker.topic_stats("shipments")
        assert stats.partitions == 1
        assert await broker.pick()  # the event is still there, and handled
        assert [e.order for e in seen] == ["o1"]
        await broker.configure_topic("shipments", partitions=12)
        [stats] = await broker.topic_stats("shipments")
        assert stats.partitions == 12


@pytest.mark.parametrize("bad", [0, MAX_PARTITIONS + 1, 2.0, False])
async def test_a_bad_count_is_refused_before_the_store(bad: object) -> None:
    async with Broker.from_url("memory://", group="g") as broker:
        with pytest.raises(ValueError, match=f"from 1 to {MAX_PARTITIONS}"):
            await broker.configure_topic("shipments", partitions=bad)  # type: ignore[arg-type]


def test_the_sync_api_configures_partitions() -> None:
    with SyncBroker.from_url("memory://", group="g") as broker:
        broker.configure_topic("shipments", partitions=3)
        [stats] = broker.topic_stats("shipments")
        assert stats.partitions == 3


def test_partition_of_is_stable_and_spreads() -> None:
    # A CRC-32 of the key (of the id without one): the same in every process and release.
    assert partition_of("e1", "order-42", 12) == zlib.crc32(b"order-42") % 12
    assert partition_of("e1", None, 12) == zlib.crc32(b"e1") % 12
    assert partition_of("e1", "order-42", 1) == 0
    spread = {partition_of(f"e{n}", f"k{n}", 12) for n in range(200)}
    assert spread == set(range(12))


def test_cli_topics_shows_the_partitions(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(schema=unique_schema())

    async def prepare() -> None:
        async with Broker.from_url(url, group="tracking") as broker:
            await broker.configure_topic("shipments", partitions=12)
            await broker.subscribe("shipments")

    asyncio.run(prepare())
    result = runner.invoke(app, ["topics", "--url", url])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.output.splitlines() if "shipments" in line]
    assert "12" in row and "tracking" in row
