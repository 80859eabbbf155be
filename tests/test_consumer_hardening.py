"""Regressions of the consumer found by hostile testing: fencing, attempts, stopping, failures.

Real time with short leases, as in test_consumer_lifecycle.py; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import pytest

from broker_core import Broker, BrokerOptions, Delivery, Event, RetryPolicy
from broker_core import consumer as consumer_module
from broker_core.transport import Message, Receipt
from broker_memory.transport import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=5, initial_delay=0, max_delay=0, jitter=0)


class Job(Event):
    topic: ClassVar[str] = "jobs"
    n: int


async def _settled(broker: Broker, seconds: float = 5) -> None:
    """Wait until nothing of "jobs" is ready, leased or delayed."""
    async with asyncio.timeout(seconds):
        while True:
            [stats] = await broker.stats("jobs")
            if (stats.ready, stats.leased, stats.delayed) == (0, 0, 0):
                return
            await asyncio.sleep(0.02)


async def _running_one(broker: Broker, started: asyncio.Event) -> asyncio.Task[None]:
    """Publish one job and run ``broker`` until its handler has ``started``."""
    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    run = asyncio.create_task(broker.run())
    async with asyncio.timeout(5):
        await started.wait()
    return run


async def test_asking_for_a_shorter_lease_opens_no_fencing_gap(broker_url: str) -> None:
    worker = Broker.from_url(broker_url, group="g", lease=30, retry=NO_WAIT)
    thief = Broker.from_url(broker_url, group="g", lease=30, retry=NO_WAIT)
    lost: list[bool] = []
    stolen: list[int] = []

    @worker.on(Job)
    async def slow(event: Job, delivery: Delivery[Job]) -> None:
        await delivery.extend(0.5)
        for _ in range(4):
            await asyncio.sleep(0.5)
            lost.append(delivery.lease_lost)
            assert await thief.pick() is False

    @thief.on(Job)
    async def steal(event: Job) -> None:
        stolen.append(event.n)

    async with worker, thief:
        await worker.subscribe("jobs")
        await worker.publish(Job(n=1))
        assert await worker.pick()
        await _settled(worker)
    # The store kept the 30 s lease, as the worker believed: nobody else ran the event.
    assert lost == [False] * 4
    assert stolen == []


async def test_graceful_restarts_use_up_no_attempts(broker_url: str) -> None:
    attempts: list[int] = []
    started = asyncio.Event()
    for restart in range(6):
        broker = Broker.from_url(
            broker_url, group="g", shutdown_grace=0.05, max_attempts=3, retry=NO_WAIT
        )

        @broker.on(Job)
        async def slow(event: Job, delivery: Delivery[Job], overrun: bool = restart < 5) -> None:
            attempts.append(delivery.attempt)
            started.set()
            if overrun:
                await asyncio.sleep(30)  # still running when the deploy stops us

        async with broker:
            if restart == 0:
                await broker.subscribe("jobs")
                await broker.publish(Job(n=1))
            started.clear()
            run = asyncio.create_task(broker.run())
            async with asyncio.timeout(5):
                await started.wait()
            if restart < 5:
                broker.stop()
                await asyncio.wait_for(run, 5)
            else:
                await _settled(broker)
                broker.stop()
                await asyncio.wait_for(run, 5)
                assert await broker.dead_letters("jobs") == []
    assert attempts == [1] * 6


class CountedReleases(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.releases: list[int] = []

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        self.releases.append(len(receipts))
        return await super().release(receipts)


async def test_stopping_gives_back_every_unfinished_event_in_one_call() -> None:
    transport = CountedReleases()
    broker = Broker(
        transport, BrokerOptions(group="g", concurrency=8, shutdown_grace=0.05, retry=NO_WAIT)
    )
    running = 0

    @broker.on(Job)
    async def slow(event: Job) -> None:
        nonlocal running
        running += 1
        await asyncio.sleep(30)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish_many([Job(n=i) for i in range(8)])
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(5):
            while running < 8:
                await asyncio.sleep(0.01)
        broker.stop()
        await asyncio.wait_for(run, 5)
        [stats] = await broker.stats("jobs")
    assert transport.releases == [8]
    assert (stats.ready, stats.leased) == (8, 0)


class HangingRelease(MemoryTransport):
    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        await asyncio.sleep(3600)  # a store that stopped answering
        return []


async def test_giving_back_is_bounded_when_the_store_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_module, "_GIVE_BACK_TIMEOUT", 0.2)
    broker = Broker(HangingRelease(), BrokerOptions(group="g", shutdown_grace=0, retry=NO_WAIT))
    started = asyncio.Event()

    @broker.on(Job)
    async def slow(event: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    async with broker:
        run = await _running_one(broker, started)
        broker.stop()
        await asyncio.wait_for(run, 2)


async def test_abort_cuts_the_shutdown_grace_short() -> None:
    broker = Broker(MemoryTransport(), BrokerOptions(group="g", shutdown_grace=60))
    started = asyncio.Event()

    @broker.on(Job)
    async def stuck(event: Job) -> None:
        started.set()
        await asyncio.sleep(3600)

    async with broker:
        run = await _running_one(broker, started)
        broker.stop()
        await asyncio.sleep(0.1)  # inside the grace
        broker.abort()
        await asyncio.wait_for(run, 2)
        [stats] = await broker.stats("jobs")
    assert stats.leased == 1  # an abort settles nothing: the lease expires


class SlowRenewals(MemoryTransport):
    """An ack reaches the store before a renewal sent earlier, but answers after it."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = asyncio.Event()

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        self.renewing.set()
        await asyncio.sleep(0.05)
        return await super().extend(receipts, lease)

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        results = await super().ack(receipts)
        await asyncio.sleep(0.15)
        return results


async def test_an_ack_that_overtakes_a_renewal_is_no_lost_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = SlowRenewals()
    broker = Broker(transport, BrokerOptions(group="g", lease=0.3, retry=NO_WAIT))
    told: list[bool] = []

    @broker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        await transport.renewing.wait()  # the renewal now on its way includes this event
        told.append(delivery.lease_lost)

    caplog.set_level(logging.INFO, logger="broker.consumer")
    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        run = asyncio.create_task(broker.run())
        await _settled(broker)
        await asyncio.sleep(0.3)  # the overtaken renewal and the ack have answered
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert told == [False]
    assert "lost the lease" not in caplog.text
    assert "after its lease was lost" not in caplog.text


class BuggyClaimOnce(MemoryTransport):
    """The first claim raises what is not a TransportError: a bug of the transport."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        if not self.failed:
            self.failed = True
            raise KeyError("a bug in a third-party transport")
        return await super().claim(
            group, topics, max_count=max_count, lease=lease, max_attempts=max_attempts
        )


async def test_a_buggy_claim_is_logged_with_its_traceback_and_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker(BuggyClaimOnce(), BrokerOptions(group="g", retry=NO_WAIT))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        run = asyncio.create_task(broker.run())
        await _settled(broker)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert handled == [1]
    [record] = [r for r in caplog.records if "claim failed" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None


async def test_an_event_whose_lease_expired_runs_alone(broker_url: str) -> None:
    """A consumer that crashed (aborted) holding a batch: each of its events runs alone."""
    crashed = Broker.from_url(broker_url, group="g", lease=0.3, concurrency=4, retry=NO_WAIT)
    survivor = Broker.from_url(broker_url, group="g", lease=0.3, concurrency=8, retry=NO_WAIT)
    held = 0
    running = 0
    alone: list[tuple[int, int]] = []  # (attempt, handlers running meanwhile) of redeliveries

    @crashed.on(Job)
    async def doomed(event: Job) -> None:
        nonlocal held
        held += 1
        await asyncio.sleep(3600)

    @survivor.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        nonlocal running
        running += 1
        try:
            if delivery.attempt > 1:
                alone.append((delivery.attempt, running))
            await asyncio.sleep(0.02)
            if delivery.attempt > 1:
                alone.append((delivery.attempt, running))
        finally:
            running -= 1

    async with crashed, survivor:
        await crashed.subscribe("jobs")
        await crashed.publish_many([Job(n=i) for i in range(4)])
        crash = asyncio.create_task(crashed.run())
        async with asyncio.timeout(5):
            while held < 4:
                await asyncio.sleep(0.01)
        crashed.abort()
        await asyncio.wait_for(crash, 5)
        await crashed.publish_many([Job(n=i) for i in range(4, 20)])
        run = asyncio.create_task(survivor.run())
        await _settled(survivor)
        survivor.stop()
        await asyncio.wait_for(run, 5)
    assert len(alone) == 8
    assert all(attempt == 2 and others == 1 for attempt, others in alone), alone


Handler = Callable[[Job, Delivery[Job]], Awaitable[None]]


@contextlib.asynccontextmanager
async def suspect_behind_a_neighbour(
    url: str, handler: Handler, *, lease: float
) -> AsyncIterator[tuple[Broker, asyncio.Task[None]]]:
    """A consumer crashed holding event 0; a survivor runs ``handler`` and is given event 1.

    The survivor claims event 1 first; event 0 comes back isolated once its lease
    expires, while the survivor may still be handling event 1. Yields the survivor and
    its run; both brokers are closed afterwards.
    """
    crashed = Broker.from_url(url, group="g", lease=lease, concurrency=1, retry=NO_WAIT)
    survivor = Broker.from_url(url, group="g", lease=lease, concurrency=4, retry=NO_WAIT)
    held = asyncio.Event()

    @crashed.on(Job)
    async def doomed(event: Job) -> None:
        held.set()
        await asyncio.sleep(3600)

    survivor.on(Job)(handler)
    async with crashed, survivor:
        await crashed.subscribe("jobs")
        await crashed.publish(Job(n=0))
        crash = asyncio.create_task(crashed.run())
        async with asyncio.timeout(5):
            await held.wait()
        crashed.abort()
        await asyncio.wait_for(crash, 5)
        await crashed.publish(Job(n=1))
        run = asyncio.create_task(survivor.run())
        try:
            yield survivor, run
        finally:
            survivor.stop()
            await asyncio.wait_for(run, 5)


async def test_an_isolated_event_keeps_its_lease_while_it_waits(broker_url: str) -> None:
    runs: list[tuple[int, int, bool]] = []

    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        runs.append((event.n, delivery.attempt, delivery.lease_lost))
        if event.n == 1:
            await asyncio.sleep(1.2)  # four leases: the isolated event waits all along

    async with suspect_behind_a_neighbour(broker_url, handle, lease=0.3) as (survivor, _):
        await asyncio.sleep(0.1)
        await _settled(survivor)
        assert await survivor.dead_letters("jobs") == []
    assert sorted(runs) == [(0, 2, False), (1, 1, False)]


async def test_an_isolated_event_waiting_at_stop_is_given_back_unstarted(
    broker_url: str,
) -> None:
    runs: list[tuple[int, int]] = []
    neighbour = asyncio.Event()

    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        runs.append((event.n, delivery.attempt))
        if event.n == 1:
            neighbour.set()
            await asyncio.sleep(1.0)

    async with suspect_behind_a_neighbour(broker_url, handle, lease=0.3) as (survivor, run):
        async with asyncio.timeout(5):
            await neighbour.wait()
        await asyncio.sleep(0.5)  # event 0 expired and was claimed: it waits, isolated
        survivor.stop()
        await asyncio.wait_for(run, 5)
        [stats] = await survivor.stats("jobs")
        assert (stats.ready, stats.leased) == (1, 0)
        taken = await survivor.transport.claim("g", ["jobs"], max_count=5, lease=5, max_attempts=5)
    assert runs == [(1, 1)]  # event 0 never started on the stopping consumer
    assert [(m.attempt, m.isolated) for m in taken] == [(2, True)]  # uncharged by the stop


class SlowFirstAck(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.slow = True

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        if self.slow:
            self.slow = False
            await asyncio.sleep(1)
        return await super().ack(receipts)


async def test_an_ack_cancelled_on_the_wire_holds_nothing_up() -> None:
    transport = SlowFirstAck()
    broker = Broker(transport, BrokerOptions(group="g", lease=0.3, retry=NO_WAIT))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=0))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(broker.pick(), 0.2)  # cancelled during its ack
        await broker.publish_many([Job(n=i) for i in range(1, 4)])
        run = asyncio.create_task(broker.run())
        # Event 0's lease expires: it comes back isolated, and must not wait for the
        # answer of an ack nobody will read.
        await _settled(broker, 3)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert sorted(handled) == [0, 0, 1, 2, 3]


async def test_a_handler_raising_cancelled_error_is_retried_at_once() -> None:
    broker = Broker(MemoryTransport(), BrokerOptions(group="g", lease=30, retry=NO_WAIT))
    attempts: list[int] = []

    @broker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise asyncio.CancelledError  # e.g. it awaited a future someone cancelled

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        run = asyncio.create_task(broker.run())
        await _settled(broker, 3)  # not after the 30 s lease
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert attempts == [1, 2]


class IsolatesEverything(MemoryTransport):
    """A faulty transport: every claimed event comes out marked isolated."""

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        messages = await super().claim(
            group, topics, max_count=max_count, lease=lease, max_attempts=max_attempts
        )
        return [dataclasses.replace(m, isolated=True) for m in messages]


async def test_isolated_events_in_company_do_not_deadlock_the_consumer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = Broker(IsolatesEverything(), BrokerOptions(group="g", retry=NO_WAIT))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish_many([Job(n=i) for i in range(6)])
        run = asyncio.create_task(broker.run())
        await _settled(broker)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert sorted(handled) == list(range(6))
    assert "against the protocol" in caplog.text


async def test_pick_is_refused_while_run_is_in_progress() -> None:
    broker = Broker(MemoryTransport(), BrokerOptions(group="g"))

    @broker.on(Job)
    async def handle(event: Job) -> None: ...

    async with broker:
        run = asyncio.create_task(broker.run())
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="run"):
            await broker.pick()
        broker.stop()
        await asyncio.wait_for(run, 5)
