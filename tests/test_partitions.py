"""Partitioned topics through the Broker, the sync API and the CLI, on every store: what
the shared conformance suite (PartitionConformance) does not reach."""

from __future__ import annotations

import asyncio
import zlib
from typing import ClassVar

import asyncpg
import pytest
from typer.testing import CliRunner

from broker_core import Broker, Event, PartitionChangeRefused, SyncBroker, partition_of
from broker_core.cli import app
from broker_core.partitions import MAX_PARTITIONS
from broker_memory import MemoryTransport
from broker_postgres.testing import PostgresServer, unique_schema
from broker_postgres.transport import PostgresTransport

runner = CliRunner()


class ShipmentStep(Event):
    topic: ClassVar[str | None] = "shipments"
    key_field: ClassVar[str | None] = "order"
    order: str
    step: int


async def test_a_partitioned_topic_keeps_each_keys_order(broker_url: str) -> None:
    async with Broker.from_url(broker_url, group="tracking", concurrency=8) as broker:
        await broker.configure_topic("shipments", partitions=6)
        await broker.subscribe("shipments", ordered=True)
        seen: list[ShipmentStep] = []

        @broker.on(ShipmentStep)
        async def handle(event: ShipmentStep) -> None:
            seen.append(event)

        await broker.publish_many(ShipmentStep(order=f"o{n % 10}", step=n // 10) for n in range(60))
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
        seen: list[ShipmentStep] = []
        broker.on(ShipmentStep)(seen.append)
        await broker.subscribe("shipments")
        await broker.publish(ShipmentStep(order="o1", step=0))
        with pytest.raises(PartitionChangeRefused) as refused:
            await broker.configure_topic("shipments", partitions=12)
        message = str(refused.value)
        assert "from 1 partition to 12" in message and "'tracking' holds events" in message
        assert "partitions=12" in message
        assert "Nothing was changed" in message
        [stats] = await broker.topic_stats("shipments")
        assert stats.partitions == 1
        assert await broker.pick()  # the event is still there, and handled
        assert [e.order for e in seen] == ["o1"]
        await broker.configure_topic("shipments", partitions=12)
        [stats] = await broker.topic_stats("shipments")
        assert stats.partitions == 12


class _Unreachable(MemoryTransport):
    """A transport the Broker must not call: its checks come first."""

    async def configure_topic(self, topic: str, **options: object) -> None:
        raise AssertionError(f"configure_topic reached the transport with {options}")


@pytest.mark.parametrize("bad", [0, MAX_PARTITIONS + 1, 2.0, False])
async def test_a_bad_count_is_refused_before_the_store(bad: object) -> None:
    async with Broker(_Unreachable()) as broker:
        with pytest.raises(ValueError, match=f"from 1 to {MAX_PARTITIONS}"):
            await broker.configure_topic("shipments", partitions=bad)  # type: ignore[arg-type]


class _BeforePartitions(MemoryTransport):
    """A transport written before partitioned topics: its configure_topic has none."""

    async def configure_topic(  # type: ignore[override]
        self, topic: str, *, max_age: float | None = None, max_events: int | None = None
    ) -> None:
        await super().configure_topic(topic, max_age=max_age, max_events=max_events)


async def test_a_transport_without_partitions_says_so() -> None:
    async with Broker(_BeforePartitions()) as broker:
        with pytest.raises(TypeError, match="_BeforePartitions has no partitioned topics"):
            await broker.configure_topic("shipments", partitions=4)
        await broker.configure_topic("shipments", max_age=60)  # retention still works
        [stats] = await broker.topic_stats("shipments")
        assert (stats.max_age, stats.partitions) == (60.0, 1)


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


async def test_postgres_a_change_waits_for_a_publish_in_flight(
    postgres_server: PostgresServer,
) -> None:
    # A publish in the caller's transaction holds the topic's shared lock until it
    # commits: the change waits for it, then sees its event, and is refused.
    transport = PostgresTransport(postgres_server.url(schema=unique_schema()))
    await transport.connect()
    conn = await asyncpg.connect(postgres_server.url())
    try:
        await transport.subscribe("shipments", "tracking")
        async with conn.transaction():
            await transport.publish("shipments", [("e1", b"x")], connection=conn)
            change = asyncio.ensure_future(transport.configure_topic("shipments", partitions=4))
            done, _ = await asyncio.wait({change}, timeout=0.5)
            assert not done, "the change did not wait for the publish in flight"
        with pytest.raises(PartitionChangeRefused, match="'tracking' holds events"):
            await asyncio.wait_for(change, 10)
        assert (await transport.topic_stats("shipments")).partitions == 1
        assert (await transport.stats("shipments", "tracking")).ready == 1
    finally:
        await conn.close()
        await transport.close()
