"""The scenarios, run with this project's :class:`~broker_core.Broker` on any URL.

Every scenario builds fresh brokers on a store the runner has emptied, warms them up with
a few events outside the clock, then times only the work the scenario names. Every wait is
bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from benchmarks import fresh
from benchmarks.payload import TOPIC, BenchEvent, make_events, make_keyed_events
from benchmarks.probes import MemoryProbe
from broker_core import Broker, BrokerOptions, Event, Receipt, Transport
from broker_core.plugins import make_transport

__all__ = [
    "AckCounter",
    "DrainResult",
    "FanoutResult",
    "consumer",
    "drain",
    "fanout",
    "fresh_drain",
    "latency",
    "publish_rate",
    "run_until_acked",
    "time_limit",
]

WARMUP = 200
"""Events each scenario moves before its clock starts (connections, scripts, caches)."""
GROUP = "bench-g"


def time_limit(n: int) -> float:
    """The longest any one scenario may take for ``n`` events before it is abandoned."""
    return max(30.0, n / 500)


class AckCounter:
    """A transport wrapper that counts successful acks in-process (no extra round trips).

    Everything else is passed through untouched; ``done`` is set once ``expect(n)`` acks
    have been counted.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.acked = 0
        self._target = 0
        self.done = asyncio.Event()
        self.finished_at = 0.0
        self.finished_monotonic = 0.0

    def expect(self, n: int) -> None:
        """Count from zero; ``done`` is set when ``n`` acks succeeded."""
        self.acked = 0
        self._target = n
        self.done = asyncio.Event()

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        results = await self._inner.ack(receipts)
        self.acked += sum(results)
        if self.acked >= self._target and not self.done.is_set():
            self.finished_at = time.perf_counter()
            self.finished_monotonic = time.monotonic()
            self.done.set()
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def consumer(url: str, plugins: Sequence[object] = (), **options: Any) -> tuple[Broker, AckCounter]:
    """A consumer broker of the benchmark's group with ``options`` (else the defaults),
    whose acks are counted."""
    counter = AckCounter(make_transport(url))
    opts = BrokerOptions(url=url, group=GROUP, **options)
    return Broker(cast(Transport, counter), opts, plugins=plugins), counter


async def run_until_acked(broker: Broker, counter: AckCounter, n: int) -> float:
    """Run ``broker`` until ``n`` acks are counted; seconds from start to the last ack."""
    counter.expect(n)
    start = time.perf_counter()
    running = asyncio.create_task(broker.run())
    try:
        async with asyncio.timeout(time_limit(n)):
            done = asyncio.create_task(counter.done.wait())
            await asyncio.wait({done, running}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                done.cancel()
                running.result()  # re-raise what ended the consumer
                raise RuntimeError("consumer stopped before draining")
        return counter.finished_at - start
    finally:
        broker.stop()
        async with asyncio.timeout(30):
            await running


async def _publish_all(broker: Broker, events: Sequence[Event], batch: int = 1000) -> None:
    for i in range(0, len(events), batch):
        await broker.publish_many(events[i : i + batch])


async def publish_rate(url: str, events: Sequence[BenchEvent], batch: int | None) -> float:
    """Events/s of ``publish`` (batch None) or ``publish_many`` in batches, one group."""
    publisher, subscriber = Broker.from_url(url), Broker.from_url(url, group=GROUP)
    async with publisher, subscriber:
        await subscriber.subscribe(TOPIC)
        for event in make_events(WARMUP, start=len(events)):
            await publisher.publish(event)
        gc.collect()
        async with asyncio.timeout(time_limit(len(events))):
            start = time.perf_counter()
            if batch is None:
                for event in events:
                    await publisher.publish(event)
            else:
                for i in range(0, len(events), batch):
                    await publisher.publish_many(events[i : i + batch])
            elapsed = time.perf_counter() - start
    return len(events) / elapsed


@dataclass(frozen=True)
class DrainResult:
    """A drain: its rate, and the store's memory before, while pending and after."""

    rate: float
    seconds: float
    before: int | None
    pending: int | None
    after: int | None


async def drain(
    url: str,
    events: Sequence[BenchEvent],
    options: Mapping[str, Any],
    probe: MemoryProbe | None = None,
    plugins: Sequence[object] = (),
    ordered: bool = False,
) -> DrainResult:
    """Pre-queue ``events``; one warm consumer with a no-op async handler drains them all.

    ``options`` are the consumer's broker options beyond url and group (empty: the
    defaults a new user gets).

    The publisher keeps no dedup window, so that the memory figures show the state
    machine alone (it must return to the start); the fan-out scenario publishes with the
    default window, and the memory table shows what a dedup record costs. ``plugins``
    are the consumer's own (the cost of lifecycle hooks). ``ordered`` subscribes the
    group with ``ordered=True`` (events with ordering keys show what per-key order costs).
    """
    publisher = Broker.from_url(url, dedup_window=0)
    broker, counter = consumer(url, plugins, **options)

    @broker.on(type(events[0]))
    async def noop(event: BenchEvent) -> None:
        pass

    warmup = (make_keyed_events if ordered else make_events)(WARMUP, start=len(events))
    async with publisher, broker:
        await broker.subscribe(TOPIC, ordered=ordered)
        await _publish_all(publisher, warmup)
        await run_until_acked(broker, counter, WARMUP)
        before = probe.read() if probe else None
        await _publish_all(publisher, events)
        pending = probe.read() if probe else None
        gc.collect()
        seconds = await run_until_acked(broker, counter, len(events))
        after = probe.read() if probe else None
    return DrainResult(len(events) / seconds, seconds, before, pending, after)


async def latency(url: str, n: int, gap: float) -> list[float]:
    """Seconds from each ``publish`` call to its handler, ``n`` events ``gap`` s apart."""
    publisher = Broker.from_url(url)
    broker, counter = consumer(url)
    sent: dict[str, float] = {}
    seen: list[float] = []

    @broker.on(BenchEvent)
    async def stamp(event: BenchEvent) -> None:
        seen.append(time.perf_counter() - sent[event.id])

    events = make_events(n)
    async with publisher, broker:
        await broker.subscribe(TOPIC)
        counter.expect(n)
        running = asyncio.create_task(broker.run())
        try:
            async with asyncio.timeout(time_limit(n) + n * gap):
                await asyncio.sleep(0.3)  # the consumer is idle, waiting for work
                due = time.perf_counter()
                for event in events:
                    pause = due - time.perf_counter()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    sent[event.id] = time.perf_counter()
                    await publisher.publish(event)
                    due += gap
                await counter.done.wait()
        finally:
            broker.stop()
            async with asyncio.timeout(30):
                await running
    return seen


async def fresh_drain(url: str, events: Sequence[BenchEvent], *options: str) -> float:
    """Queue ``events``, then time a fresh consumer process draining them (events/s).

    ``options`` are :mod:`benchmarks.fresh` flags (``--concurrency 64``, ``--loop uvloop``).
    """
    publisher, subscriber = Broker.from_url(url, dedup_window=0), Broker.from_url(url, group=GROUP)
    async with publisher, subscriber:
        await subscriber.subscribe(TOPIC)
        await _publish_all(publisher, events)
    gc.collect()
    return await fresh.spawn("ours", url, len(events), *options, timeout=time_limit(len(events)))


@dataclass(frozen=True)
class FanoutResult:
    """Publishing to a topic with ``groups`` subscribed groups."""

    groups: int
    rate: float
    before: int | None
    after: int | None


async def fanout(
    url: str,
    events: Sequence[BenchEvent],
    groups: int,
    probe: MemoryProbe | None = None,
    batch: int = 100,
) -> FanoutResult:
    """``publish_many`` in batches of ``batch`` to a topic that ``groups`` groups subscribe."""
    publisher = Broker.from_url(url)
    subscribers = [Broker.from_url(url, group=f"{GROUP}-{g}") for g in range(groups)]
    async with publisher:
        for subscriber in subscribers:
            async with subscriber:
                await subscriber.subscribe(TOPIC)
        await _publish_all(publisher, make_events(WARMUP, start=len(events)), batch)
        before = probe.read() if probe else None
        gc.collect()
        async with asyncio.timeout(time_limit(len(events) * groups)):
            start = time.perf_counter()
            for i in range(0, len(events), batch):
                await publisher.publish_many(events[i : i + batch])
            elapsed = time.perf_counter() - start
        after = probe.read() if probe else None
    return FanoutResult(groups, len(events) / elapsed, before, after)
