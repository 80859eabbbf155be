"""Two review findings of the consumer: a buffered event's lease when its handler starts,
and a transport answering a batch call with the wrong number of results.

Real time with short leases, as in test_consumer_lifecycle.py; every wait is bounded in
time and count, and nothing here measures a speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import ClassVar

import pytest

from broker_core import Broker, BrokerOptions, Delivery, Event, RetryPolicy, TransportError
from broker_core.transport import Receipt
from broker_memory import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=20, initial_delay=0, max_delay=0, jitter=0)


class Task(Event):
    topic: ClassVar[str] = "review-tasks"
    n: int


async def _drained(broker: Broker, seconds: float) -> None:
    """Wait until nothing of the topic is ready, leased or delayed."""
    async with asyncio.timeout(seconds):
        while True:
            [stats] = await broker.stats("review-tasks")
            if (stats.ready, stats.leased, stats.delayed) == (0, 0, 0):
                return
            await asyncio.sleep(0.02)


class RenewalsFail(MemoryTransport):
    """Every lease renewal fails, as in an outage that spares claims and acks."""

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        raise TransportError("renewals are down")


async def test_a_buffered_event_never_starts_on_a_nearly_lapsed_lease() -> None:
    # Handlers take 0.3 of a lease and renewals fail: an event that waited in the buffer
    # behind two others would start with a tenth of its lease left and lose it midway.
    lease = 0.6
    broker = Broker(
        RenewalsFail(), BrokerOptions(group="g", lease=lease, concurrency=1, retry=NO_WAIT)
    )
    lost: list[int] = []
    handled: set[int] = set()

    @broker.on(Task)
    async def handle(event: Task, delivery: Delivery[Task]) -> None:
        await asyncio.sleep(lease * 0.3)
        if delivery.lease_lost:
            lost.append(event.n)
        handled.add(event.n)

    async with broker:
        await broker.subscribe("review-tasks")
        await broker.publish_many([Task(n=i) for i in range(12)])
        run = asyncio.create_task(broker.run())
        try:
            await _drained(broker, 30)
        finally:
            broker.stop()
            await asyncio.wait_for(run, 5)
    assert handled == set(range(12))
    assert lost == []


class WrongLengthOnce(MemoryTransport):
    """Answers one ack or one renewal with a result too few: a bug of the transport."""

    def __init__(self, call: str) -> None:
        super().__init__()
        self.call = call
        self.buggy = True

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        results = await super().ack(receipts)
        if self.call == "ack" and self.buggy:
            self.buggy = False
            return results[:-1]
        return results

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        results = await super().extend(receipts, lease)
        if self.call == "extend" and self.buggy:
            self.buggy = False
            return results[:-1]
        return results


def _mismatch_logged(caplog: pytest.LogCaptureFixture, what: str) -> None:
    """One error, with the transport's answer and its traceback, logged for ``what``."""
    [record] = [r for r in caplog.records if r.exc_info and "results for" in str(r.exc_info[1])]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith(what)


async def test_an_ack_answered_with_too_few_results_is_logged_and_acking_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker(WrongLengthOnce("ack"), BrokerOptions(group="g", retry=NO_WAIT))
    handled: list[int] = []

    @broker.on(Task)
    async def handle(event: Task) -> None:
        handled.append(event.n)

    async with broker:
        await broker.subscribe("review-tasks")
        await broker.publish(Task(n=1))
        run = asyncio.create_task(broker.run())
        try:
            await _drained(broker, 5)
            # The ack loop must still be alive: a later event is acked too.
            await broker.publish(Task(n=2))
            await _drained(broker, 5)
            assert not run.done()
        finally:
            broker.stop()
            await asyncio.wait_for(run, 5)
    assert handled == [1, 2]
    _mismatch_logged(caplog, "acking 1 events failed")


async def test_a_renewal_answered_with_too_few_results_is_logged_and_renewing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease = 0.3
    broker = Broker(WrongLengthOnce("extend"), BrokerOptions(group="g", lease=lease, retry=NO_WAIT))
    told: list[bool] = []

    @broker.on(Task)
    async def handle(event: Task, delivery: Delivery[Task]) -> None:
        # Three leases long: renewals after the buggy one must keep the lease.
        await asyncio.sleep(lease * 3)
        told.append(delivery.lease_lost)

    async with broker:
        await broker.subscribe("review-tasks")
        await broker.publish(Task(n=1))
        run = asyncio.create_task(broker.run())
        try:
            await _drained(broker, 5)
        finally:
            broker.stop()
            await asyncio.wait_for(run, 5)
    assert told == [False]
    _mismatch_logged(caplog, "lease renewal failed")
