"""One reader of the store for every browser: counts sampled once per interval, pushed.

Dashboards that let each browser poll the store multiply its load by the number of open
tabs. Here one background task reads every queue's counts once per interval, works out
rates from the previous reading, and hands the result to every connected browser over
server-sent events; pages render from the latest sample too, so no browser request ever
reads the counts from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from broker_core.errors import BrokerError
from broker_core.transport import QueueStats, TopicStats, Transport

__all__ = ["QueueRow", "Reading", "Sample", "Sampler", "read_store"]

log = logging.getLogger("broker.dashboard")


Reading = tuple[list[QueueStats], dict[str, TopicStats]]
"""What one reading of the store gives: every queue's counts, and each topic's retention."""


async def read_store(transport: Transport) -> Reading:
    """Every (topic, group)'s counts and every topic's retention, in one pass."""
    queues: list[QueueStats] = []
    topics: dict[str, TopicStats] = {}
    for topic in await transport.topics():
        topics[topic] = await transport.topic_stats(topic)
        for group in await transport.groups(topic):
            queues.append(await transport.stats(topic, group))
    return queues, topics


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One (topic, group) of a sample: its counts, and how they moved since the last one."""

    stats: QueueStats
    retention: TopicStats | None
    """Its topic's retention and history."""
    lag_rate: float | None
    """Change of the lag, in events per second: positive while the backlog grows."""
    dead_rate: float | None
    """Change of the dead count, in events per second."""
    acked_rate: float | None = None
    """Events the group acked per second (None: unknown yet, or not counted)."""
    published_rate: float | None = None
    """Events published to the topic per second (None: unknown yet, or not counted)."""

    @property
    def name(self) -> str:
        """``topic/group``: the name of its live updates."""
        return f"{self.stats.topic}/{self.stats.group}"


@dataclass(frozen=True, slots=True)
class Sample:
    """Every queue's counts at one moment, or why they could not be read."""

    taken_at: float
    """Wall-clock time of the reading (``time.time()``)."""
    rows: tuple[QueueRow, ...] = ()
    error: str | None = None
    """The store's error, when this reading failed (the rows are then the last known)."""
    by_name: dict[str, QueueRow] = field(default_factory=dict, compare=False)

    def row(self, topic: str, group: str) -> QueueRow | None:
        """The row of (topic, group), if the sample has it."""
        return self.by_name.get(f"{topic}/{group}")


def _rate(now: int, before: int, seconds: float) -> float:
    return (now - before) / seconds


def _counted_rate(now: int | None, before: int | None, seconds: float) -> float | None:
    """A counter's rate; None where the transport keeps no counter, or it went back (the
    group subscribed anew)."""
    if now is None or before is None or now < before:
        return None
    return (now - before) / seconds


class Sampler:
    """Reads the counts with ``read`` every ``interval`` seconds and publishes each sample.

    ``subscribe`` gives an async iterator of samples, starting with the latest one; a
    slow subscriber skips samples rather than queueing them (only the newest matters).
    """

    def __init__(self, read: Callable[[], Awaitable[Reading]], interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._read = read
        self.interval = interval
        self.latest = Sample(taken_at=time.time(), error="no reading yet")
        self._subscribers: set[asyncio.Queue[Sample]] = set()
        self._previous: tuple[float, dict[str, QueueStats], dict[str, TopicStats]] | None = None

    async def sample_once(self) -> Sample:
        """Take one reading, publish it to every subscriber, and return it."""
        started = time.monotonic()
        try:
            reading = await self._read()
        except (BrokerError, OSError) as exc:
            log.warning("dashboard: cannot read the store: %s", exc)
            sample = Sample(
                taken_at=time.time(),
                rows=self.latest.rows,
                error=str(exc),
                by_name=self.latest.by_name,
            )
        else:
            sample = self._sample(started, *reading)
        self.latest = sample
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(sample)
        return sample

    def _sample(self, now: float, stats: list[QueueStats], topics: dict[str, TopicStats]) -> Sample:
        previous = self._previous
        self._previous = (now, {f"{s.topic}/{s.group}": s for s in stats}, topics)
        rows = []
        for s in stats:
            retention = topics.get(s.topic)
            before = previous[1].get(f"{s.topic}/{s.group}") if previous else None
            if before is None or previous is None or now <= previous[0]:
                rows.append(QueueRow(s, retention, None, None))
                continue
            seconds = now - previous[0]
            then = previous[2].get(s.topic)
            rows.append(
                QueueRow(
                    s,
                    retention,
                    _rate(s.lag, before.lag, seconds),
                    _rate(s.dead, before.dead, seconds),
                    _counted_rate(s.acked, before.acked, seconds),
                    _counted_rate(
                        retention.published if retention else None,
                        then.published if then else None,
                        seconds,
                    ),
                )
            )
        return Sample(
            taken_at=time.time(), rows=tuple(rows), by_name={row.name: row for row in rows}
        )

    async def run(self, *, first_after: float = 0.0) -> None:
        """Sample until cancelled, one reading per interval, the first after ``first_after`` s."""
        await asyncio.sleep(first_after)
        while True:
            started = time.monotonic()
            await self.sample_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Sample]]:
        """A queue that receives every sample from now on, the latest one first."""
        queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=1)
        queue.put_nowait(self.latest)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        """How many browsers receive the samples now."""
        return len(self._subscribers)
