"""Gauges of how many events wait in each state, per topic and group, from ``Broker.stats``.

Metric readers collect on their own schedule and thread, and asking the store costs
round trips: so collections read a cache, and a collection that finds it older than the
refresh interval also schedules one refresh on the broker's event loop, whose answer the
next collections report. The store is asked at most once per interval, however many
gauges and readers collect.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from broker_core import Broker, QueueStats
from broker_otel import attributes as attr

__all__ = ["STATES", "QueueGauges"]

log = logging.getLogger("broker.otel")

STATES = ("ready", "leased", "delayed", "dead")
"""The states a gauge ``broker.queue.<state>`` is reported for."""


@dataclass(slots=True)
class _Watched:
    broker: Broker
    loop: asyncio.AbstractEventLoop
    stats: list[QueueStats] = field(default_factory=list)
    refreshed_at: float = float("-inf")
    refreshing: bool = False


class QueueGauges:
    """The gauges ``broker.queue.ready``, ``.leased``, ``.delayed`` and ``.dead``."""

    def __init__(self, meter: Meter, system: str, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"the queue stats interval must not be negative, got {interval}")
        self._system = system
        self._interval = interval
        self._watched: list[_Watched] = []
        self._lock = threading.Lock()  # collections come from the readers' threads
        for state in STATES:
            meter.create_observable_gauge(
                f"broker.queue.{state}",
                callbacks=[self._observer(state)],
                unit="{message}",
                description=f"Events {state} per topic and group, as Broker.stats() counts them.",
            )

    async def observe(self, broker: Broker) -> None:
        """Report ``broker``'s queues from now on; returns once their first counts are in."""
        with self._lock:
            if any(watched.broker is broker for watched in self._watched):
                return
            watched = _Watched(broker, asyncio.get_running_loop(), refreshing=True)
            self._watched.append(watched)
        await self._refresh(watched)

    def _observer(self, state: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(
                    getattr(stats, state),
                    {
                        attr.SYSTEM: self._system,
                        attr.DESTINATION: stats.topic,
                        attr.CONSUMER_GROUP: stats.group,
                    },
                )
                for stats in self._current()
            ]

        return observe

    def _current(self) -> list[QueueStats]:
        """The cached counts, scheduling a refresh of those that are due."""
        now = time.monotonic()
        current: list[QueueStats] = []
        due: list[_Watched] = []
        with self._lock:
            for watched in self._watched:
                current.extend(watched.stats)
                if not watched.refreshing and now - watched.refreshed_at >= self._interval:
                    watched.refreshing = True
                    due.append(watched)
        for watched in due:
            refresh = self._refresh(watched)
            try:
                asyncio.run_coroutine_threadsafe(refresh, watched.loop)
            except RuntimeError:
                # Its event loop is closed: nothing can ask that broker any more.
                refresh.close()
                with self._lock:
                    self._watched.remove(watched)
        return current

    async def _refresh(self, watched: _Watched) -> None:
        try:
            stats = await watched.broker.stats()
        except Exception:
            log.warning("reading queue stats for the OpenTelemetry gauges failed", exc_info=True)
            stats = []  # stale counts would pass for current ones
        with self._lock:
            watched.stats = stats
            watched.refreshed_at = time.monotonic()
            watched.refreshing = False
