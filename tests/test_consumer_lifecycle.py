"""The consumer's life cycle: lease renewal, stopping, closing, and failures of the transport.

These run in real time with short leases (fractions of a second), because lease renewal
is the consumer's own timer; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from broker_core import Broker, BrokerOptions, Delivery, Event, RetryPolicy, TransportError
from broker_core.transport import Message, Receipt
from broker_memory.transport import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=5, initial_delay=0, max_delay=0, jitter=0)


class Job(Event):
    topic: ClassVar[str] = "jobs"
    n: int


async def _until(condition: threading.Event | asyncio.Event, seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition.is_set():
            await asyncio.sleep(0.01)


async def test_leases_stay_renewed_after_a_pick_ends_during_run(broker_url: str) -> None:
    worker = Broker.from_url(broker_url, group="g", lease=0.3, retry=NO_WAIT)
    thief = Broker.from_url(broker_url, group="g", lease=0.3, retry=NO_WAIT)
    running: set[int] = set()
    overlaps: list[int] = []

    @worker.on(Job)
    async def work(event: Job) -> None:
        running.add(event.n)
        await asyncio.sleep(0.1 if event.n == 0 else 1.2)
        running.discard(event.n)

    @thief.on(Job)
    async def steal(event: Job) -> None:
        overlaps.append(event.n)

    async with worker, thief:
        await worker.subscribe("jobs")
        await worker.publish(Job(n=0))
        pick = asyncio.create_task(worker.pick())
        await asyncio.sleep(0.05)
        await worker.publish(Job(n=1))
        run = asyncio.create_task(worker.run())
        await pick
        for _ in range(10):
            await asyncio.sleep(0.1)
            await thief.pick()
        worker.stop()
        await asyncio.wait_for(run, 5)
    assert overlaps == [], "an event was redelivered while its handler still ran"


@dataclass
class WorkerAndThief:
    """A consumer whose handler is slow, and a second consumer of its group."""

    worker: Broker
    thief: Broker
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: list[int] = field(default_factory=list)
    stolen: list[int] = field(default_factory=list)

    async def stop_mid_handler(self) -> asyncio.Task[None]:
        """Run the worker on one event and stop it while its handler runs."""
        await self.worker.subscribe("jobs")
        await self.worker.publish(Job(n=1))
        run = asyncio.create_task(self.worker.run())
        await _until(self.started)
        self.worker.stop()
        return run


def worker_and_thief(url: str, *, handler_seconds: float, shutdown_grace: float) -> WorkerAndThief:
    pair = WorkerAndThief(
        Broker.from_url(url, group="g", lease=0.3, shutdown_grace=shutdown_grace, retry=NO_WAIT),
        Broker.from_url(url, group="g", lease=0.3, retry=NO_WAIT),
    )

    @pair.worker.on(Job)
    async def slow(event: Job) -> None:
        pair.started.set()
        await asyncio.sleep(handler_seconds)
        pair.finished.append(event.n)

    @pair.thief.on(Job)
    async def steal(event: Job) -> None:
        pair.stolen.append(event.n)

    return pair


async def test_leases_stay_renewed_during_the_shutdown_grace(broker_url: str) -> None:
    pair = worker_and_thief(broker_url, handler_seconds=1.2, shutdown_grace=3)
    async with pair.worker, pair.thief:
        run = await pair.stop_mid_handler()
        for _ in range(10):
            await asyncio.sleep(0.1)
            await pair.thief.pick()
        await asyncio.wait_for(run, 5)
        [stats] = await pair.worker.stats("jobs")
    assert (pair.finished, pair.stolen) == ([1], [])
    assert (stats.ready, stats.leased, stats.delayed) == (0, 0, 0)


class SlowSubscribe(MemoryTransport):
    """Subscribing waits until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.proceed = asyncio.Event()

    async def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        self.entered.set()
        await self.proceed.wait()
        await super().subscribe(topic, group, ordered=ordered, history=history)


async def test_stop_while_run_is_starting_is_kept() -> None:
    transport = SlowSubscribe()
    broker = Broker(transport, BrokerOptions(group="g"))

    @broker.on(Job)
    async def handle(event: Job) -> None: ...

    async with broker:
        run = asyncio.create_task(broker.run())
        await _until(transport.entered)
        broker.stop()  # e.g. SIGTERM while the service is still subscribing
        transport.proceed.set()
        await asyncio.wait_for(run, 5)


async def test_a_stop_with_no_run_in_progress_does_not_stop_the_next_run(
    broker_url: str,
) -> None:
    broker = Broker.from_url(broker_url, group="g", poll_interval=0.05)
    handled = asyncio.Event()

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.set()

    async with broker:
        await broker.subscribe("jobs")
        broker.stop()
        run = asyncio.create_task(broker.run())
        await broker.publish(Job(n=1))
        await _until(handled)
        broker.stop()
        await asyncio.wait_for(run, 5)


class SlowAcks(MemoryTransport):
    """Acks take a network round trip."""

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        await asyncio.sleep(0.3)
        return await super().ack(receipts)


async def test_acks_on_the_wire_survive_a_graceful_stop() -> None:
    broker = Broker(SlowAcks(), BrokerOptions(group="g", retry=NO_WAIT))
    handled = asyncio.Event()

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.set()

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        run = asyncio.create_task(broker.run())
        await _until(handled)
        await asyncio.sleep(0.05)
        broker.stop()
        await asyncio.wait_for(run, 5)
        [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased) == (0, 0)


async def test_closing_waits_for_a_running_consumer(broker_url: str) -> None:
    broker = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    started = asyncio.Event()
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        started.set()
        await asyncio.sleep(0.3)
        handled.append(event.n)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        run = asyncio.create_task(broker.run())
        await _until(started)
    await asyncio.wait_for(run, 5)
    async with Broker.from_url(broker_url, group="g") as probe:
        [stats] = await probe.stats("jobs")
    assert handled == [1]
    assert (stats.ready, stats.leased) == (0, 0)


class CountedClaims(MemoryTransport):
    """Counts claims; cancels the tasks in ``cancel_on_claim`` after a claim that got events."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0
        self.cancel_on_claim: list[asyncio.Task[None]] = []

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        self.claims += 1
        messages = await super().claim(
            group, topics, max_count=max_count, lease=lease, max_attempts=max_attempts
        )
        if messages and self.cancel_on_claim:
            self.cancel_on_claim.pop().cancel()
        return messages


async def test_cancelling_run_gives_back_every_claimed_event() -> None:
    transport = CountedClaims()
    broker = Broker(transport, BrokerOptions(group="g", concurrency=4, retry=NO_WAIT))

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await asyncio.sleep(10)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish_many([Job(n=i) for i in range(4)])
        run = asyncio.create_task(broker.run())
        transport.cancel_on_claim.append(run)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 5)
        [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased) == (4, 0)


async def test_plain_function_handlers_finish_before_their_event_is_released(
    broker_url: str,
) -> None:
    # A thread cannot be interrupted: stopping waits for it rather than releasing an
    # event whose handler still runs.
    first = Broker.from_url(broker_url, group="g", shutdown_grace=0.1, retry=NO_WAIT)
    second = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    live = 0
    peak = 0
    lock = threading.Lock()
    entered = threading.Event()

    def body(event: Job) -> None:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        entered.set()
        time.sleep(0.6)
        with lock:
            live -= 1

    first.on(Job)(body)
    second.on(Job)(body)
    async with first, second:
        await first.subscribe("jobs")
        await first.publish(Job(n=1))
        run = asyncio.create_task(first.run())
        await _until(entered)
        first.stop()
        await asyncio.wait_for(run, 5)
        assert await second.pick() is False
        [stats] = await first.stats("jobs")
    assert peak == 1
    assert (stats.ready, stats.leased) == (0, 0)


class FailingRenewals(MemoryTransport):
    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        raise TransportError("cannot reach the store")


async def test_handler_is_told_when_its_lease_ran_out_unrenewed() -> None:
    broker = Broker(FailingRenewals(), BrokerOptions(group="g", lease=0.3, retry=NO_WAIT))
    seen: list[bool] = []

    @broker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        seen.append(delivery.lease_lost)
        await asyncio.sleep(0.6)
        seen.append(delivery.lease_lost)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        assert await broker.pick()
    assert seen == [False, True]


class BrokenWait(CountedClaims):
    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        raise RuntimeError("a bug in a third-party transport")


async def test_a_failing_wait_backs_off_instead_of_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = BrokenWait()
    broker = Broker(transport, BrokerOptions(group="g"))

    @broker.on(Job)
    async def handle(event: Job) -> None: ...

    async with broker:
        run = asyncio.create_task(broker.run())
        await asyncio.sleep(1.0)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert transport.claims < 10
    assert "a bug in a third-party transport" in caplog.text


class Other(Event):
    topic: ClassVar[str] = "others"
    n: int


async def test_a_busy_topic_does_not_starve_another(broker_url: str) -> None:
    broker = Broker.from_url(broker_url, group="g", concurrency=1, retry=NO_WAIT)
    order: list[str] = []

    @broker.on(Job)
    async def job(event: Job) -> None:
        order.append(f"job{event.n}")

    @broker.on(Other)
    async def other(event: Other) -> None:
        order.append("other")

    async with broker:
        await broker.subscribe("jobs", "others")
        await broker.publish_many([Job(n=i) for i in range(50)])
        await broker.publish(Other(n=0))
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(10):
            while len(order) < 51:
                await asyncio.sleep(0.01)
        broker.stop()
        await asyncio.wait_for(run, 5)
    # Claims take turns between topics: the other topic's event is not last in line.
    assert order.index("other") < 5


async def test_cancelling_run_during_the_grace_ends_every_handler(broker_url: str) -> None:
    pair = worker_and_thief(broker_url, handler_seconds=1.0, shutdown_grace=5)
    async with pair.worker, pair.thief:
        run = await pair.stop_mid_handler()
        await asyncio.sleep(0.1)  # inside the grace period
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, 5)
        alive = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.sleep(1.2)
        assert await pair.thief.pick()
    assert alive == []
    assert (pair.finished, pair.stolen) == ([], [1])


class AckFailsOnce(MemoryTransport):
    """The first ack raises something that is not a TransportError (a transport's bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        if not self.failed:
            self.failed = True
            raise ConnectionResetError("peer reset")
        return await super().ack(receipts)


async def test_a_failed_ack_does_not_stop_later_acks() -> None:
    broker = Broker(AckFailsOnce(), BrokerOptions(group="g", lease=0.3, retry=NO_WAIT))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=0))
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(5):
            while not handled:
                await asyncio.sleep(0.01)
        await broker.publish_many([Job(n=i) for i in range(1, 6)])
        # The first event's ack failed: it comes back when its lease expires.
        async with asyncio.timeout(5):
            while True:
                [stats] = await broker.stats("jobs")
                if (stats.ready, stats.leased) == (0, 0) and len(handled) >= 7:
                    break
                await asyncio.sleep(0.05)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert sorted(set(handled)) == list(range(6))


async def test_pick_after_an_aborted_run_settles_normally(broker_url: str) -> None:
    broker = Broker.from_url(broker_url, group="g", retry=NO_WAIT)

    @broker.on(Job)
    async def handle(event: Job) -> None: ...

    async with broker:
        await broker.subscribe("jobs")
        run = asyncio.create_task(broker.run())
        await asyncio.sleep(0.05)
        broker.abort()
        await asyncio.wait_for(run, 5)
        await broker.publish(Job(n=1))
        assert await broker.pick()
        [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased) == (0, 0)


async def test_close_from_inside_a_handler_is_refused(broker_url: str) -> None:
    broker = Broker.from_url(broker_url, group="g", max_attempts=1)
    errors: list[str] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        try:
            await broker.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        broker.stop()

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        await asyncio.wait_for(broker.run(), 5)
    assert len(errors) == 1
    assert "call broker.stop() there instead" in errors[0]
