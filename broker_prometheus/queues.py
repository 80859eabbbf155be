"""The queue gauges: how many events of each watched (topic, group) are in each state.

The counts come from the store (``Transport.stats``), which every instance of a group
shares, so they are read by one task per plugin at a fixed interval, not once per scrape:
a scrape only reads the last values, and the store's load does not grow with the number
of scrapers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

from broker_core import cancel_and_wait

if TYPE_CHECKING:
    from broker_core.broker import Broker

__all__ = ["STATES", "QueueGauges"]

log = logging.getLogger("broker.prometheus")

STATES = ("ready", "leased", "delayed", "dead")
"""The values of the ``state`` label: the fields of ``QueueStats`` it reports."""


class QueueGauges:
    """``broker_queue_events{topic,group,state}`` for the topics of the running consumers.

    :meth:`consumer_started` and :meth:`consumer_stopped` say which (topic, group) pairs
    are consumed; while any is, one task reads their counts from the store of the broker
    given to :meth:`watch` every ``interval`` seconds. A pair no consumer runs any more
    has its series removed, so a stopped consumer leaves no stale counts behind.
    """

    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the refresh interval must be positive")
        self._gauge = Gauge(
            "broker_queue_events",
            "Events of a topic and group in each state (ready, leased, delayed, dead), "
            "as the store counted them at the last refresh.",
            ("topic", "group", "state"),
            registry=registry,
        )
        self._interval = interval
        self._broker: Broker | None = None
        # A multiset: two consumers of one group in a process consume the same pairs.
        self._consumed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._task: asyncio.Task[None] | None = None

    def watch(self, broker: Broker) -> None:
        """Read the counts from ``broker``'s store."""
        self._broker = broker

    @property
    def refreshing(self) -> bool:
        """Whether the refresh task is running."""
        return self._task is not None and not self._task.done()

    def consumer_started(self, group: str, topics: Sequence[str]) -> None:
        """Count ``topics`` of ``group`` from now on; start the refresh task if need be.

        Called on the event loop of the consumer, where the task then runs.
        """
        self._consumed.update((topic, group) for topic in topics)
        if self._broker is None:
            log.warning(
                "consumer of group %r started, but no broker is watched: queue gauges need "
                "PrometheusMetrics.watch_queues(broker)",
                group,
            )
        elif not self.refreshing:
            self._task = asyncio.create_task(self._refresh_forever(), name="queue gauges")

    async def consumer_stopped(self, group: str, topics: Sequence[str]) -> None:
        """Stop counting ``topics`` of ``group``; end the task once no consumer is left."""
        self._consumed.subtract((topic, group) for topic in topics)
        gone = [pair for pair, consumers in self._consumed.items() if consumers <= 0]
        for pair in gone:
            del self._consumed[pair]
        if not self._consumed and self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task)
        for topic, group_name in gone:
            for state in STATES:
                with contextlib.suppress(KeyError):  # never refreshed
                    self._gauge.remove(topic, group_name, state)

    async def refresh(self) -> None:
        """Read the counts of every consumed pair from the store now."""
        if self._broker is None:
            return
        transport = self._broker.transport
        for topic, group in list(self._consumed):
            stats = await transport.stats(topic, group)
            # The consumer may have stopped during the read: its series stay removed.
            if (topic, group) not in self._consumed:
                continue
            for state in STATES:
                self._gauge.labels(topic, group, state).set(getattr(stats, state))

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                # The store may be unreachable for a while: the gauges keep their last
                # counts, and the consumer itself reports the outage.
                log.warning("reading queue counts for the gauges failed", exc_info=True)
            await asyncio.sleep(self._interval)
