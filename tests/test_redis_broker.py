"""The Broker on Redis, end to end: ``Broker.run()`` through an outage, and the demo.

The transport-level tests show that calls fail cleanly while Redis is down and work again
after; these show that a running consumer rides through it and loses nothing.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from broker_core.broker import Broker
from broker_core.delivery import Delivery
from broker_core.demo import GROUPS, run_demo
from broker_core.errors import EventTooLarge, TransportError
from broker_core.events import Event
from broker_redis.testing import RedisFactory, unique_prefix

GROUP = "billing"


class OutagePing(Event):
    """An event of the outage test."""

    topic: ClassVar[str] = "outage-pings"
    n: int


async def _until(condition: set[str], seen: set[str], seconds: float) -> None:
    """Return once every id of ``condition`` is in ``seen``; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition <= seen:
            await asyncio.sleep(0.02)


async def test_run_rides_through_redis_going_away(redis_factory: RedisFactory) -> None:
    # Append-only with fsync on every write: what was published before the stop is still
    # there after the restart, and the consumer must handle all of it.
    server = redis_factory(["--appendonly", "yes", "--appendfsync", "always"])
    url = f"{server.url}?key_prefix={unique_prefix()}&socket_timeout=1&socket_connect_timeout=0.5"
    consumer = Broker.from_url(url, group=GROUP, poll_interval=0.1, lease=1.0)
    publisher = Broker.from_url(url)
    started: set[str] = set()
    handled: set[str] = set()
    attempts: list[int] = []

    @consumer.on(OutagePing)
    async def handle(event: OutagePing, delivery: Delivery[OutagePing]) -> None:
        started.add(event.id)
        attempts.append(delivery.attempt)
        await asyncio.sleep(0.2)  # so that events are in flight when Redis stops
        handled.add(event.id)

    async with consumer, publisher:
        await consumer.subscribe(OutagePing.topic)
        run = asyncio.create_task(consumer.run())
        before = [OutagePing(n=n) for n in range(10)]
        await publisher.publish_many(before)
        await _until({e.id for e in before}, handled, 10)

        in_flight = [OutagePing(n=n) for n in range(10, 40)]
        await publisher.publish_many(in_flight)
        await _until({in_flight[0].id}, started, 10)
        # In threads, so that the consumer keeps running (and failing) meanwhile.
        await asyncio.to_thread(server.stop)
        try:
            await publisher.publish(OutagePing(n=-1))
        except TransportError:
            pass  # the documented outcome: a clear error, nothing half-written
        else:
            raise AssertionError("publish succeeded while Redis was down")
        await asyncio.sleep(2)
        assert not run.done(), "run() ended while Redis was down"
        await asyncio.to_thread(server.start)

        after = [OutagePing(n=n) for n in range(40, 60)]
        await publisher.publish_many(after)
        # Events acked before the stop are done; those whose acks failed come back when
        # their leases expire: every event published while Redis was up is handled.
        await _until({e.id for e in before + in_flight + after}, handled, 20)
        assert not run.done(), "run() ended after Redis came back"
        assert max(attempts) > 1, "no event was in flight when Redis stopped"
        consumer.stop()
        async with asyncio.timeout(10):
            await run  # returns normally: no exception escaped


class Filed(Event):
    """An event of the size limit test, on topic "filed"."""

    topic: ClassVar[str] = "filed"
    text: str


class Archived(Event):
    """An event of the size limit test, on topic "archived"."""

    topic: ClassVar[str] = "archived"
    text: str


async def test_the_transports_smaller_limit_is_checked_before_anything_is_sent(
    redis_url: str, key_prefix: str
) -> None:
    # max_body_bytes below max_event_bytes: publish_many used to store the topic whose
    # events fit, then have the transport refuse the other topic's.
    url = f"{redis_url}?key_prefix={key_prefix}&max_body_bytes=300"
    async with Broker.from_url(url, group=GROUP, max_event_bytes=1000) as broker:
        await broker.subscribe("filed", "archived")
        big = Archived(text="x" * 400)
        refused = f"event {big.id} .* the limit is the transport's max_body_bytes=300"
        with pytest.raises(EventTooLarge, match=refused):
            await broker.publish_many([Filed(text="fits"), big])
        with pytest.raises(EventTooLarge, match=refused):
            await broker.publish(big)
        assert [(s.topic, s.ready) for s in await broker.stats()] == [
            ("archived", 0),
            ("filed", 0),
        ]
        claimed = await broker.transport.claim(
            GROUP, ["filed", "archived"], max_count=10, lease=5, max_attempts=5
        )
        assert claimed == []
        assert broker.transport.max_body_bytes == 300


async def test_demo_on_redis_loses_nothing(redis_url: str, key_prefix: str) -> None:
    report = await run_demo(f"{redis_url}?key_prefix={key_prefix}", 200)
    assert report.lost == 0, report
    # The one poison order of each group, and nothing else.
    assert {g.group: g.dead for g in report.groups} == dict.fromkeys(GROUPS, 1)
