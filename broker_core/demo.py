"""The demonstration behind ``broker demo``: crash recovery, retries and dead letters, counted.

Two groups (``demo-billing``, ``demo-shipping``) of two consumers each subscribe to one
topic; N orders are published. Every tenth order fails on its first attempt and is
retried; one poison order fails every time and ends in dead letters; one billing
consumer crashes a third of the way through, and the events it held come back to its
partner when their leases expire. At the end every published event must be handled or
dead in each group: anything else is counted as lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from broker_core.broker import Broker
from broker_core.delivery import Delivery
from broker_core.events import Event
from broker_core.retry import RetryPolicy

__all__ = ["DemoOrder", "DemoReport", "GroupReport", "run_demo"]

TOPIC = "demo-orders"
GROUPS = ("demo-billing", "demo-shipping")
_CONSUMER_OPTIONS: dict[str, Any] = {
    "lease": 1.0,
    "poll_interval": 0.2,
    "concurrency": 8,
    "shutdown_grace": 1.0,
    "retry": RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=0.2),
}


class DemoOrder(Event):
    """An order of the demo; ``flaky`` ones fail once, a ``poison`` one always."""

    topic: ClassVar[str] = TOPIC
    number: int
    total: float
    flaky: bool = False
    poison: bool = False


@dataclass
class GroupReport:
    """What one group saw."""

    group: str
    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    handled: set[str] = field(default_factory=set)
    dead: int = 0
    lost: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        """Events settled (handled or dead) per second of the run."""
        return (len(self.handled) + self.dead) / self.seconds if self.seconds else 0.0


@dataclass
class DemoReport:
    """The outcome of a demo run."""

    url: str
    groups: list[GroupReport]
    crashed: str

    @property
    def lost(self) -> int:
        """Events that reached neither a successful handler nor dead letters, in any group."""
        return sum(g.lost for g in self.groups)


async def run_demo(
    url: str = "memory://",
    events: int = 1000,
    *,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 120.0,
) -> DemoReport:
    """Run the demonstration on ``url``; ``progress(settled, total)`` is called as it goes."""
    if events < 10:
        raise ValueError("the demo needs at least 10 events")
    reports = {group: GroupReport(group, published=events) for group in GROUPS}
    consumers: list[Broker] = []
    crash_at = events // 3
    crashed = f"{GROUPS[0]}#2"
    for group in GROUPS:
        for number in (1, 2):
            broker = Broker.from_url(url, group=group, **_CONSUMER_OPTIONS)
            _register(broker, reports[group], crash=(f"{group}#{number}" == crashed, crash_at))
            consumers.append(broker)
    publisher = Broker.from_url(url)
    orders = [
        DemoOrder(number=n, total=round(n * 1.5, 2), flaky=n % 10 == 3, poison=n == events // 2)
        for n in range(events)
    ]
    ids = {order.id for order in orders}
    async with publisher:
        for broker in consumers:
            await broker.connect()
        try:
            for broker in consumers:
                await broker.subscribe(TOPIC)
            started = time.monotonic()
            runs = [asyncio.create_task(broker.run()) for broker in consumers]
            for start in range(0, events, 100):
                await publisher.publish_many(orders[start : start + 100])
            await _await_settled(consumers, reports, ids, progress, timeout)
            elapsed = time.monotonic() - started
            for broker in consumers:
                broker.stop()
            await asyncio.gather(*runs, return_exceptions=True)
            for group, report in reports.items():
                dead = await _dead_ids(consumers[GROUPS.index(group) * 2], group, ids)
                report.dead = len(dead)
                report.lost = len(ids - report.handled - dead)
                report.seconds = elapsed
                # Its dead letters would outlive the demo in a shared store.
                await consumers[0].purge_dead(TOPIC, sorted(dead), group=group)
        finally:
            for broker in consumers:
                await broker.close()
    return DemoReport(url=url, groups=list(reports.values()), crashed=crashed)


def _register(broker: Broker, report: GroupReport, crash: tuple[bool, int]) -> None:
    will_crash, crash_at = crash

    @broker.on(DemoOrder)
    async def handle(order: DemoOrder, delivery: Delivery[DemoOrder]) -> None:
        report.delivered += 1
        if delivery.attempt > 1:
            report.redelivered += 1
        if will_crash and len(report.handled) >= crash_at:
            # Die mid-handler: nothing held by this consumer is acked or given back.
            broker.abort()
            await asyncio.Event().wait()
        if order.poison:
            raise ValueError(f"order {order.number} is poison")
        if order.flaky and delivery.attempt == 1:
            raise ConnectionError(f"order {order.number}: payment service timed out")
        await asyncio.sleep(0)
        report.handled.add(order.id)


async def _dead_ids(broker: Broker, group: str, ids: set[str]) -> set[str]:
    letters = await broker.dead_letters(TOPIC, group=group, limit=10_000)
    return {letter.event_id for letter in letters if letter.event_id in ids}


async def _await_settled(
    consumers: list[Broker],
    reports: dict[str, GroupReport],
    ids: set[str],
    progress: Callable[[int, int], None] | None,
    timeout: float,
) -> None:
    total = len(ids) * len(reports)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        settled = 0
        for index, (group, report) in enumerate(reports.items()):
            dead = await _dead_ids(consumers[index * 2], group, ids)
            settled += len((report.handled & ids) | dead)
        if progress is not None:
            progress(settled, total)
        if settled >= total:
            return
        await asyncio.sleep(0.1)
