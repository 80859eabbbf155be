"""The consumer's buffer of events claimed ahead (fair to other consumers, leases kept),
and the runner tasks that take events from it (each handler in a fresh context).

Real time with short leases, as in test_consumer_lifecycle.py; every wait is bounded in
time and count, and nothing here measures a speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from broker_core import Broker, BrokerOptions, Delivery, Event, Message, RetryPolicy
from broker_memory import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=5, initial_delay=0, max_delay=0, jitter=0)


class PrefetchJob(Event):
    topic: ClassVar[str] = "prefetch-jobs"
    n: int


async def test_two_consumers_with_default_options_share_a_small_queue(broker_url: str) -> None:
    # Slow handlers (held until both consumers have work, or the bound runs out): a
    # consumer that claimed the whole queue at once would leave the other one idle.
    first = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    second = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    total = first.options.concurrency + first.options.concurrency // 2
    started: dict[str, list[int]] = {"first": [], "second": []}
    both = asyncio.Event()

    def handler(name: str) -> object:
        async def handle(event: PrefetchJob) -> None:
            started[name].append(event.n)
            if started["first"] and started["second"]:
                both.set()
            await asyncio.wait_for(both.wait(), 3)

        return handle

    first.on(PrefetchJob)(handler("first"))
    second.on(PrefetchJob)(handler("second"))
    async with first, second:
        await first.subscribe("prefetch-jobs")
        await first.publish_many([PrefetchJob(n=i) for i in range(total)])
        runs = [asyncio.create_task(b.run()) for b in (first, second)]
        async with asyncio.timeout(10):
            while len(started["first"]) + len(started["second"]) < total:
                await asyncio.sleep(0.01)
            while True:
                [stats] = await first.stats("prefetch-jobs")
                if stats.lag == 0:
                    break
                await asyncio.sleep(0.01)
        for b in (first, second):
            b.stop()
        await asyncio.wait_for(asyncio.gather(*runs), 5)
    assert started["first"] and started["second"], started
    assert sorted(started["first"] + started["second"]) == list(range(total))


class CountedClaims(MemoryTransport):
    """Records how many events each claim asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    async def claim(self, group: str, topics: Sequence[str], **kwargs: Any) -> list[Message]:
        self.asked.append(kwargs["max_count"])
        return await super().claim(group, topics, **kwargs)


async def test_a_warmed_up_consumer_asks_for_little_again_after_idling() -> None:
    # Draining a backlog grows the prefetch; once the queue runs dry, the next events may
    # be a small queue that other idle consumers should share.
    transport = CountedClaims()
    broker = Broker(transport, BrokerOptions(group="g", retry=NO_WAIT))
    concurrency = broker.options.concurrency

    @broker.on(PrefetchJob)
    async def handle(event: PrefetchJob) -> None: ...

    async with broker:
        await broker.subscribe("prefetch-jobs")
        await broker.publish_many([PrefetchJob(n=i) for i in range(3000)])
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(20):
            while (await broker.stats("prefetch-jobs"))[0].lag:
                await asyncio.sleep(0.01)
            assert max(transport.asked) > concurrency  # it did prefetch
            while transport.asked[-1] != concurrency:  # the claim that found it dry
                await asyncio.sleep(0.01)
            idle_from = len(transport.asked)
            await broker.publish_many([PrefetchJob(n=i) for i in range(3000, 3010)])
            while (await broker.stats("prefetch-jobs"))[0].lag:
                await asyncio.sleep(0.01)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert transport.asked[idle_from] == concurrency, transport.asked[idle_from - 3 :]


async def test_buffered_events_keep_their_leases_and_go_back_uncharged_on_stop(
    broker_url: str,
) -> None:
    lease = 0.3
    broker = Broker.from_url(
        broker_url, group="g", lease=lease, concurrency=1, shutdown_grace=0, retry=NO_WAIT
    )
    stuck = asyncio.Event()
    seen: list[int] = []

    @broker.on(PrefetchJob)
    async def handle(event: PrefetchJob) -> None:
        seen.append(event.n)
        if event.n == 40:
            stuck.set()
            await asyncio.sleep(3600)  # cancelled by the stop

    async with broker:
        await broker.subscribe("prefetch-jobs")
        await broker.publish_many([PrefetchJob(n=i) for i in range(100)])
        run = asyncio.create_task(broker.run())
        await asyncio.wait_for(stuck.wait(), 5)
        async with asyncio.timeout(5):
            # The acks of the 40 handled events may still be on their way (seen on
            # PostgreSQL under load): counting them as held would fail the check below.
            while True:
                [held] = await broker.stats("prefetch-jobs")
                if held.leased + held.ready == 60:
                    break
                await asyncio.sleep(0.01)
        # The handlers kept up until event 40, so events beyond the running one are
        # buffered: claimed ahead, leased to this consumer.
        assert held.leased > 1
        await asyncio.sleep(4 * lease)
        [later] = await broker.stats("prefetch-jobs")  # expired leases would show as ready
        assert (later.leased, later.ready) == (held.leased, held.ready)
        broker.stop()
        await asyncio.wait_for(run, 5)
        [stopped] = await broker.stats("prefetch-jobs")
    assert seen == list(range(41))
    assert (stopped.leased, stopped.ready) == (0, 60)

    after = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    attempts: dict[int, int] = {}

    @after.on(PrefetchJob)
    async def finish(event: PrefetchJob, delivery: Delivery[PrefetchJob]) -> None:
        attempts[event.n] = delivery.attempt

    async with after:
        run = asyncio.create_task(after.run())
        async with asyncio.timeout(5):
            while len(attempts) < 60:
                await asyncio.sleep(0.01)
        after.stop()
        await asyncio.wait_for(run, 5)
    # Given back, not failed: no attempt was charged, the stuck one's included.
    assert attempts == {n: 1 for n in range(40, 100)}


_LEAKED: contextvars.ContextVar[int] = contextvars.ContextVar("leaked")


async def test_a_context_variable_one_handler_sets_is_not_seen_by_the_next() -> None:
    # Handlers run one after another in a few runner tasks, yet each starts in a fresh
    # copy of run()'s context, as it would in a task of its own.
    broker = Broker.from_url("memory://", group="g", concurrency=1, retry=NO_WAIT)
    seen: list[int | None] = []

    @broker.on(PrefetchJob)
    async def handle(event: PrefetchJob) -> None:
        seen.append(_LEAKED.get(None))
        _LEAKED.set(event.n)

    async with broker:
        await broker.subscribe("prefetch-jobs")
        await broker.publish_many([PrefetchJob(n=i) for i in range(50)])
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(5):
            while len(seen) < 50:
                await asyncio.sleep(0.01)
        broker.stop()
        await asyncio.wait_for(run, 5)
    assert seen == [None] * 50


async def test_cancelling_run_ends_a_runner_whose_thread_handler_outlived_it() -> None:
    # The runner absorbs the cancellation while its thread runs (a thread cannot be
    # interrupted); once the thread is done it must end, not wait for more work.
    broker = Broker.from_url("memory://", group="g", shutdown_grace=0, retry=NO_WAIT)
    entered = threading.Event()

    def body(event: PrefetchJob) -> None:
        entered.set()
        time.sleep(0.3)

    broker.on(PrefetchJob)(body)
    async with broker:
        await broker.subscribe("prefetch-jobs")
        await broker.publish(PrefetchJob(n=1))
        run = asyncio.create_task(broker.run())
        async with asyncio.timeout(5):
            while not entered.is_set():
                await asyncio.sleep(0.01)
        run.cancel()
        done, _ = await asyncio.wait({run}, timeout=5)
        assert done == {run}
        with contextlib.suppress(asyncio.CancelledError):
            await run
        [stats] = await broker.stats("prefetch-jobs")
    assert (stats.ready, stats.leased, stats.delayed) == (0, 0, 0)
