"""The Broker on PostgreSQL, end to end: ``Broker.run()`` through a server outage.

The process tests show consumers written against the transport riding through a
restart; this shows that the core's own consumer does too, and loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

from broker_core.broker import Broker
from broker_core.delivery import Delivery
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_postgres.testing import PostgresServer, unique_schema

GROUP = "billing"


class PgOutagePing(Event):
    """An event of the outage test."""

    topic: ClassVar[str] = "pg-outage-pings"
    n: int


async def _until(condition: set[str], seen: set[str], seconds: float) -> None:
    """Return once every id of ``condition`` is in ``seen``; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition <= seen:
            await asyncio.sleep(0.02)


async def test_run_rides_through_postgres_going_away(
    postgres_factory: Callable[[], PostgresServer],
) -> None:
    server = postgres_factory()
    url = f"{server.url(schema=unique_schema())}&connect_timeout=0.5&poll_interval=0.2"
    consumer = Broker.from_url(url, group=GROUP, poll_interval=0.1, lease=1.0)
    publisher = Broker.from_url(url)
    started: set[str] = set()
    handled: set[str] = set()
    attempts: list[int] = []

    @consumer.on(PgOutagePing)
    async def handle(event: PgOutagePing, delivery: Delivery[PgOutagePing]) -> None:
        started.add(event.id)
        attempts.append(delivery.attempt)
        await asyncio.sleep(0.2)  # so that events are in flight when the server stops
        handled.add(event.id)

    async with consumer, publisher:
        await consumer.subscribe(PgOutagePing.topic)
        run = asyncio.create_task(consumer.run())
        before = [PgOutagePing(n=n) for n in range(10)]
        await publisher.publish_many(before)
        await _until({e.id for e in before}, handled, 10)

        in_flight = [PgOutagePing(n=n) for n in range(10, 40)]
        await publisher.publish_many(in_flight)
        await _until({in_flight[0].id}, started, 10)
        # In a thread, so that the consumer keeps running (and failing) meanwhile.
        await asyncio.to_thread(server.stop)
        try:
            await publisher.publish(PgOutagePing(n=-1))
        except TransportError:
            pass  # the documented outcome: a clear error, nothing half-written
        else:
            raise AssertionError("publish succeeded while PostgreSQL was down")
        await asyncio.sleep(1.5)
        assert not run.done(), "run() ended while PostgreSQL was down"
        await asyncio.to_thread(server.start)

        after = [PgOutagePing(n=n) for n in range(40, 60)]
        for _ in range(50):  # bounded: the first calls may still meet dropped connections
            try:
                await publisher.publish_many(after)
                break
            except TransportError:
                await asyncio.sleep(0.1)
        # Events acked before the stop are done; those whose acks failed come back when
        # their leases expire: every event published while the server was up is handled.
        await _until({e.id for e in before + in_flight + after}, handled, 30)
        assert not run.done(), "run() ended after PostgreSQL came back"
        assert max(attempts) > 1, "no event was in flight when PostgreSQL stopped"
        consumer.stop()
        async with asyncio.timeout(10):
            await run  # returns normally: no exception escaped
