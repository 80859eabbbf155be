"""Background loops end on stop even when a cancellation is lost on its way.

On CPython 3.11 ``asyncio.wait_for`` loses a cancellation that comes in the loop
iteration where what it waits for finished, and redis-py sends every command through it:
a dashboard then never stopped on SIGTERM (its sampler went on after its one
``cancel()``). The transports below lose the cancellation of one call on purpose, the
way redis-py does, so that each loop that is stopped by a cancellation meets it every
run. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from broker_core import Broker, BrokerOptions, Event
from broker_core.cancellation import cancel_and_wait
from broker_core.errors import TransportError
from broker_core.transport import Message, QueueStats, Receipt
from broker_dashboard import DashboardConfig, WritePolicy, create_app
from broker_memory import MemoryTransport
from broker_prometheus import PrometheusMetrics
from broker_redis.wakeups import Wakeups


class Job(Event):
    topic: ClassVar[str] = "cancellation-jobs"
    n: int


async def _call_that_loses_its_cancellation(started: asyncio.Event) -> None:
    """Block until cancelled, then return as if the call had finished."""
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps it since 3.12")
async def test_wait_for_on_this_python_loses_a_cancellation() -> None:
    # Why the helper exists: the inner call finishes in the iteration the cancel comes.
    done = asyncio.Event()

    async def call() -> str:
        await done.wait()
        return "answer"

    async def loop() -> list[str]:
        answers = []
        while len(answers) < 2:
            answers.append(await asyncio.wait_for(call(), timeout=60))
        return answers

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    done.set()
    task.cancel()
    async with asyncio.timeout(5):
        assert await task == ["answer", "answer"]


async def test_cancel_and_wait_ends_a_loop_whose_cancellation_was_lost() -> None:
    started = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            if rounds == 1:
                await _call_that_loses_its_cancellation(started)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    async with asyncio.timeout(5):
        await started.wait()
        await cancel_and_wait(task)
    assert task.cancelled()
    assert rounds >= 2  # the first cancellation was lost, and the loop went on


async def test_cancel_and_wait_raises_what_the_task_raised() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        async with asyncio.timeout(5):
            await cancel_and_wait(task)


async def test_cancel_and_wait_on_a_finished_task_returns_at_once() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    async with asyncio.timeout(1):
        await cancel_and_wait(task)


async def _ends_within(seconds: float, work: Awaitable[Any]) -> None:
    # Not asyncio.timeout: the code under test may swallow the cancellation it sends.
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        pytest.fail(f"still running after {seconds} s")
    await task


class LosesACancellation(MemoryTransport):
    """The ``nth`` call of ``method`` blocks until cancelled, then goes on as if it had
    run: what redis-py's send does on this Python when the cancellation comes as it ends."""

    def __init__(self, method: str, nth: int = 1) -> None:
        super().__init__()
        self._method, self._nth, self._calls = method, nth, 0
        self.blocked = asyncio.Event()

    async def _maybe_lose(self, method: str) -> None:
        if method == self._method:
            self._calls += 1
            if self._calls == self._nth:
                await _call_that_loses_its_cancellation(self.blocked)

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        await self._maybe_lose("extend")
        return await super().extend(receipts, lease)

    async def topics(self) -> list[str]:
        await self._maybe_lose("topics")
        return await super().topics()

    async def stats(self, topic: str, group: str) -> QueueStats:
        await self._maybe_lose("stats")
        return await super().stats(topic, group)

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        await self._maybe_lose("wait")
        return await super().wait(group, topics, timeout)


async def test_a_consumer_stops_when_its_lease_renewal_loses_a_cancellation() -> None:
    transport = LosesACancellation("extend")
    broker = Broker(transport, BrokerOptions(group="g", lease=0.3, shutdown_grace=1))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await transport.blocked.wait()  # the renewal is in flight when run() ends
        handled.append(event.n)
        broker.stop()

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    await _ends_within(10, broker.run())
    assert handled == [1]
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (0, 0)


async def test_the_queue_gauges_stop_when_a_reading_loses_a_cancellation() -> None:
    transport = LosesACancellation("stats")
    metrics = PrometheusMetrics(refresh_interval=0.05)
    broker = Broker(transport, BrokerOptions(group="g", poll_interval=0.05), plugins=[metrics])
    metrics.watch_queues(broker)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    running = asyncio.create_task(broker.run())
    await _ends_within(10, transport.blocked.wait())
    broker.stop()
    await _ends_within(10, running)
    assert not metrics.queues.refreshing


async def test_the_dashboard_stops_when_a_reading_loses_a_cancellation() -> None:
    # The first reading is the start-up's; the second, the sampler's, is in flight.
    transport = LosesACancellation("topics", nth=2)
    app = create_app(
        Broker(transport), DashboardConfig(policy=WritePolicy(False, None), refresh=0.05)
    )

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            await transport.blocked.wait()

    await _ends_within(10, serve())


async def test_a_handler_that_loses_its_cancellation_is_cancelled_again() -> None:
    # Past the shutdown grace no handler may go on: its event is given back for others.
    broker = Broker(MemoryTransport(), BrokerOptions(group="g", shutdown_grace=0.1))
    started = asyncio.Event()
    finished: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await _call_that_loses_its_cancellation(started)
        await asyncio.sleep(3600)
        finished.append(event.n)

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, started.wait())
    broker.stop()
    await _ends_within(10, running)
    assert finished == []
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (1, 0)  # given back, for another consumer


async def test_a_cancelled_run_ends_when_a_transport_call_loses_the_cancellation() -> None:
    transport = LosesACancellation("wait")
    broker = Broker(transport, BrokerOptions(group="g", poll_interval=0.05))

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    running = asyncio.create_task(broker.run())
    await _ends_within(10, transport.blocked.wait())
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await _ends_within(10, running)


async def test_a_cancelled_handler_finishes_its_cleanup() -> None:
    # One cancellation is a request: what the handler does on it (a rollback, a lock
    # released over the network) must not be cut short by the next one.
    broker = Broker(MemoryTransport(), BrokerOptions(group="g", shutdown_grace=0.1))
    started = asyncio.Event()
    cleaned: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # the cleanup's round trips
            cleaned.append(event.n)
            raise

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, started.wait())
    broker.stop()
    await _ends_within(10, running)
    assert cleaned == [1]
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (1, 0)


class ClaimsFail(MemoryTransport):
    """Every claim fails, as with the store unreachable: the consumer pauses, then retries."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = asyncio.Event()

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        self.claimed.set()
        raise TransportError("store unreachable")


async def test_a_run_cancelled_as_it_stops_raises_the_cancellation() -> None:
    # The stop and the cancellation come in one iteration while run() pauses after a
    # failed claim: the pause must not return as if only the stop had come.
    transport = ClaimsFail()
    broker = Broker(transport, BrokerOptions(group="g"))

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    running = asyncio.create_task(broker.run())
    await _ends_within(10, transport.claimed.wait())
    await asyncio.sleep(0.05)  # in the pause
    broker.stop()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await _ends_within(10, running)


class SlowAcks(MemoryTransport):
    """An ack takes a round trip of 0.3 s, as a far store's does."""

    def __init__(self) -> None:
        super().__init__()
        self.acking = asyncio.Event()

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        self.acking.set()
        await asyncio.sleep(0.3)
        return await super().ack(receipts)


async def test_a_run_cancelled_again_and_again_still_sends_its_acks() -> None:
    # cancel_and_wait, or an anyio cancel scope, cancels run() again while it stops: the
    # acks of handled events must still go out, or those events run again elsewhere.
    transport = SlowAcks()
    broker = Broker(transport, BrokerOptions(group="g"))
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, transport.acking.wait())
    await _ends_within(10, cancel_and_wait(running))
    assert running.cancelled()
    assert handled == [1]
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (0, 0)


class SlowReleases(MemoryTransport):
    """A release takes a round trip of 0.3 s."""

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        await asyncio.sleep(0.3)
        return await super().release(receipts)


async def test_a_run_cancelled_again_and_again_still_gives_back_its_events() -> None:
    transport = SlowReleases()
    broker = Broker(transport, BrokerOptions(group="g"))
    started = asyncio.Event()

    @broker.on(Job)
    async def handle(event: Job) -> None:
        started.set()
        await asyncio.sleep(3600)

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, started.wait())
    await _ends_within(10, cancel_and_wait(running))
    assert running.cancelled()
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (1, 0)  # given back, not left to its lease


async def test_a_run_cancelled_again_and_again_waits_for_a_handler_in_a_thread() -> None:
    # A thread cannot be interrupted: run() waits for it and settles its outcome, also
    # when it is cancelled again while it waits.
    broker = Broker(MemoryTransport(), BrokerOptions(group="g"))
    started = threading.Event()
    handled: list[int] = []

    @broker.on(Job)
    def handle(event: Job) -> None:
        started.set()
        time.sleep(0.5)
        handled.append(event.n)

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, asyncio.to_thread(started.wait, 10))
    await _ends_within(10, cancel_and_wait(running))
    assert running.cancelled()
    assert handled == [1]
    [stats] = await broker.stats(Job.topic)
    assert (stats.ready, stats.leased) == (0, 0)  # acked


class SaysWhenItLostACancellation(LosesACancellation):
    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.lost = asyncio.Event()

    async def _maybe_lose(self, method: str) -> None:
        await super()._maybe_lose(method)
        if method == self._method and self._calls == self._nth and not self.lost.is_set():
            self.lost.set()


async def test_a_run_cancelled_again_while_it_ends_its_lease_renewal_leaves_none_running() -> None:
    # run() is cancelled again as it cancels its renewal loop, whose first cancellation
    # was lost: the loop must end all the same, not renew on after run() (for good).
    transport = SaysWhenItLostACancellation("extend")
    broker = Broker(transport, BrokerOptions(group="g", lease=0.3))

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await asyncio.sleep(3600)

    await broker.subscribe(Job.topic)
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    await _ends_within(10, transport.blocked.wait())  # a renewal in flight
    running.cancel()
    await _ends_within(10, transport.lost.wait())
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await _ends_within(10, running)
    await asyncio.sleep(0.2)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "broker-leases"] == []


class _SlowToClosePubSub(PubSub):
    async def aclose(self) -> None:
        await asyncio.sleep(0.2)  # a close that waits on a slow network
        await super().aclose()


class _SlowToCloseRedis(Redis):
    def pubsub(self, **kwargs: Any) -> PubSub:
        return _SlowToClosePubSub(self.connection_pool, **kwargs)


async def test_the_redis_wakeups_close_their_connection_even_slowly(redis_url: str) -> None:
    # What the reader does on its cancellation (close its subscription, then its client)
    # must not be cut short by the next one: the connection would stay open, subscribed.
    clients: list[Redis] = []

    def connect(attempt: int) -> Redis:
        clients.append(_SlowToCloseRedis.from_url(redis_url, socket_timeout=None))
        return clients[-1]

    wakeups = Wakeups(connect, timeout=5.0)
    channel = f"cancellation-wake-{secrets.token_hex(4)}"
    await _ends_within(10, wakeups.watch([channel]))
    await _ends_within(10, wakeups.close())
    [client] = clients
    pool = client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections  # the subscription's
    assert not any(c.is_connected for c in connections)
