"""Scenario 6: a topic of 12 partitions over a 3-master Redis Cluster, and what routing
costs next to one redis-server.

Every round runs each contender once, in turn:

- **spread**: ``publish_many`` (batches of ``Config.batch``) and a drain of one topic
  configured with ``configure_topic(topic, partitions=12)``, its events keyed over
  :data:`KEYS` customers so that they spread over the partitions; each master's script
  calls (``EVALSHA``/``EVAL`` in ``INFO commandstats``, reset with ``CONFIG RESETSTAT``
  right before the clock starts) are summed over the rounds.
- **one topic**: the same publish and drain on a topic without partitions, once on a
  single redis-server and once on the cluster (one topic is one hash slot, so one
  master): their ratio is the cost of the cluster's routing.

The drains are warm consumers with default options in this process, timed from
``run()`` to the last ack: the "steady state" drains of scenario 2.

Until the Redis transport accepts ``partitions``, the spread runs on 12 topics instead,
one per partition, each named so that its hash tag falls in its own twelfth of the
16,384 slots (as the issue asks of a partitioned topic's tags), and the output says so.
Every step writes under a key prefix of its own and deletes its keys afterwards, so the
scenario can also run on a cluster that holds other data (``--cluster-url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from rich.console import Console

from benchmarks.ours import GROUP, WARMUP, consumer, run_until_acked, time_limit
from benchmarks.payload import BenchEvent, data_of
from benchmarks.results import Results, Row
from benchmarks.spread import Masters, deviation, fresh_prefix, shares, with_prefix
from broker_core import Broker, Event
from broker_core.partitions import partition_of
from broker_core.urls import redact
from broker_redis.testing import RedisCluster, RedisServer, redis_cli_binary, redis_server_binary

__all__ = [
    "KEYS",
    "MASTERS",
    "SPREAD_TOPIC",
    "TOLERANCE",
    "Layout",
    "Measured",
    "Outcome",
    "add_rows",
    "available",
    "detect_layout",
    "drain_rate",
    "measure",
    "publish_rate",
    "spread_layout",
    "steps",
    "topic_layout",
]

T = TypeVar("T")

MASTERS = 3
"""Masters of the cluster the scenario starts (no replicas)."""
KEYS = 1000
"""Ordering keys (customers) the scenario's events are spread over."""
SPREAD_TOPIC = "bench.spread"
TOLERANCE = 10.0
"""How many percentage points a master's share may be off an even split (33% +- 10)."""


class SpreadEvent(BenchEvent):
    """The order event of scenario 6, ordered (and so partitioned) by customer."""

    topic: ClassVar[str] = SPREAD_TOPIC
    event_type: ClassVar[str] = "BenchSpreadOrderPlaced"
    key_field: ClassVar[str | None] = "customer"


def available() -> bool:
    """Whether a local cluster can be started here (``redis-server`` and ``redis-cli``)."""
    return redis_server_binary() is not None and redis_cli_binary() is not None


@dataclass(frozen=True)
class Layout:
    """Where the scenario's events go: the topics, one event class per topic, and the
    partition count to configure (None: leave the topic as it is)."""

    name: str
    topics: tuple[str, ...]
    classes: tuple[type[BenchEvent], ...]
    partitions: int | None = None
    note: str = ""

    def events(self, n: int, start: int = 0) -> list[BenchEvent]:
        """``n`` events keyed over :data:`KEYS` customers, each of its topic's class."""
        out = []
        for i in range(start, start + n):
            key = f"cust-{i % KEYS:05d}"
            cls = self.classes[partition_of("", key, len(self.classes))]
            out.append(cls(**{**data_of(i), "customer": key}))
        return out

    async def prepare(self, broker: Broker) -> None:
        """Configure the partitions, if any, before anything is subscribed or published."""
        if self.partitions is not None:
            await broker.configure_topic(self.topics[0], partitions=self.partitions)


def topic_layout() -> Layout:
    """One topic without partitions: one hash slot, so one master of a cluster."""
    return Layout("one topic", (SPREAD_TOPIC,), (SpreadEvent,))


def spread_layout(partitions: int) -> Layout:
    """One topic of ``partitions`` partitions."""
    return Layout(
        f"{partitions} partitions", (SPREAD_TOPIC,), (SpreadEvent,), partitions=partitions
    )


_emulated: dict[int, tuple[tuple[str, ...], tuple[type[BenchEvent], ...]]] = {}


def _topics_layout(partitions: int, reason: str) -> Layout:
    """``partitions`` unpartitioned topics standing in for the partitions of one topic.

    Topic ``i``'s hash tag falls in the ``i``-th of ``partitions`` equal ranges of slots,
    as a partitioned topic's tags are to, so they spread over an evenly sharded cluster
    as the partitions will; events go to the topic of ``partition_of`` their key.
    """
    if partitions not in _emulated:
        topics, classes = [], []
        for i in range(partitions):
            low = i * REDIS_CLUSTER_HASH_SLOTS // partitions
            high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
            name = next(
                name
                for j in range(100_000)
                if low <= key_slot((name := f"{SPREAD_TOPIC}.p{i:02d}.{j}").encode()) < high
            )
            topics.append(name)
            # A class per topic: publish_many sends one transport call per topic, as a
            # partitioned topic's publish sends one per partition.
            classes.append(
                type(
                    f"SpreadEventP{i:02d}",
                    (SpreadEvent,),
                    {
                        "topic": name,
                        "event_type": f"BenchSpreadOrderPlacedP{i:02d}",
                        "__module__": __name__,
                    },
                )
            )
        _emulated[partitions] = (tuple(topics), tuple(classes))
    topics_, classes_ = _emulated[partitions]
    note = (
        f"EMULATED: {reason}; {partitions} unpartitioned topics, one per partition, "
        "their hash tags in evenly spaced slot ranges"
    )
    return Layout(f"{partitions} topics (emulated)", topics_, classes_, note=note)


async def detect_layout(url: str, partitions: int) -> Layout:
    """The partitioned layout if the transport of ``url`` keeps ``partitions`` partitions
    of a topic, else the emulation by topics, with a note saying why."""
    broker = Broker.from_url(url)
    async with broker:
        try:
            await broker.configure_topic(SPREAD_TOPIC, partitions=partitions)
            kept = (await broker.topic_stats(SPREAD_TOPIC))[0].partitions
        except (TypeError, NotImplementedError) as exc:
            reason = f"this Redis transport does not accept partitions yet ({exc})"
        else:
            if kept == partitions:
                return spread_layout(partitions)
            reason = f"configure_topic(partitions={partitions}) kept {kept} partition(s)"
    return _topics_layout(partitions, reason)


@dataclass(frozen=True)
class Measured:
    """A timed phase: its rate and length, and each master's script calls and the
    microseconds it spent in them during the phase (when counted)."""

    rate: float
    seconds: float
    cpu: float
    """CPU seconds this process (the client) spent in the phase."""
    calls: dict[str, tuple[int, int]] = field(default_factory=dict)


async def publish_rate(
    url: str, layout: Layout, events: Sequence[BenchEvent], batch: int, masters: Masters | None
) -> Measured:
    """Events/s of ``publish_many`` in batches of ``batch``, one group subscribed."""
    publisher, subscriber = Broker.from_url(url), Broker.from_url(url, group=GROUP)
    async with publisher, subscriber:
        await layout.prepare(publisher)
        await subscriber.subscribe(*layout.topics)
        await _publish_all(publisher, layout.events(WARMUP, start=len(events)), batch)
        gc.collect()
        if masters is not None:
            await masters.reset_stats()
        async with asyncio.timeout(time_limit(len(events))):
            cpu, start = time.process_time(), time.perf_counter()
            await _publish_all(publisher, events, batch)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        calls = await masters.script_calls() if masters is not None else {}
    return Measured(len(events) / elapsed, elapsed, cpu, calls)


async def drain_rate(
    url: str, layout: Layout, events: Sequence[BenchEvent], masters: Masters | None
) -> Measured:
    """Pre-queue ``events``; a warm consumer with default options drains them all."""
    publisher = Broker.from_url(url, dedup_window=0)
    broker, counter = consumer(url)

    async def noop(event: Event) -> None:
        pass

    for cls in layout.classes:
        broker.on(cls)(noop)
    async with publisher, broker:
        await layout.prepare(publisher)
        await broker.subscribe(*layout.topics)
        await _publish_all(publisher, layout.events(WARMUP, start=len(events)))
        await run_until_acked(broker, counter, WARMUP)
        await _publish_all(publisher, events)
        gc.collect()
        if masters is not None:
            await masters.reset_stats()
        cpu = time.process_time()
        seconds = await run_until_acked(broker, counter, len(events))
        cpu = time.process_time() - cpu  # includes stopping the consumer: a few ms
        calls = await masters.script_calls() if masters is not None else {}
    return Measured(len(events) / seconds, seconds, cpu, calls)


async def _publish_all(broker: Broker, events: Sequence[Event], batch: int = 1000) -> None:
    for i in range(0, len(events), batch):
        await broker.publish_many(events[i : i + batch])


class Progress(Protocol):
    """The runner's numbered progress lines."""

    async def step(self, label: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work``, print its label, figure and time."""
        ...


class Runs(Protocol):
    """The runner's record of every measurement, by (scenario, contender)."""

    def add(self, scenario: str, who: str, result: Any) -> None:
        """Record one run."""
        ...

    def best(self, scenario: str, who: str) -> float | None:
        """The best rate recorded."""
        ...

    def samples(self, scenario: str, who: str) -> list[float]:
        """Every rate recorded."""
        ...


@dataclass
class Outcome:
    """What the scenario ran on, and each master's script calls summed over the rounds."""

    masters: list[str]
    layout: Layout
    where: str
    """``local`` (started by the run), or the redacted URL of the cluster given."""
    partitions: int
    routing: bool
    """Whether the one-topic runs (single node against the cluster) were measured."""
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    """Phase (publish, drain) -> master -> script calls."""
    usec: dict[str, dict[str, int]] = field(default_factory=dict)
    """Phase -> master -> microseconds spent in scripts."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Phase -> seconds on the clock, summed like the calls."""
    cpu: dict[str, float] = field(default_factory=dict)
    """Phase -> the client's CPU seconds, summed like the calls."""
    events: dict[str, int] = field(default_factory=dict)
    """Phase -> events moved, summed like the calls."""
    round_shares: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def count(self, phase: str, measured: Measured, n: int) -> None:
        """Add a run's calls, time and ``n`` events to its phase."""
        calls = self.calls.setdefault(phase, dict.fromkeys(self.masters, 0))
        usec = self.usec.setdefault(phase, dict.fromkeys(self.masters, 0))
        for name, (called, spent) in measured.calls.items():
            calls[name] = calls.get(name, 0) + called
            usec[name] = usec.get(name, 0) + spent
        self.seconds[phase] = self.seconds.get(phase, 0.0) + measured.seconds
        self.cpu[phase] = self.cpu.get(phase, 0.0) + measured.cpu
        self.events[phase] = self.events.get(phase, 0) + n
        this_round = {name: called for name, (called, _) in measured.calls.items()}
        self.round_shares.setdefault(phase, []).append(
            {k: round(v, 1) for k, v in shares(this_round).items()}
        )

    def busiest(self, phase: str) -> float | None:
        """The busiest master's time in scripts, in % of the phase's time on the clock."""
        usec, seconds = self.usec.get(phase), self.seconds.get(phase)
        if not usec or not seconds:
            return None
        return 100.0 * max(usec.values()) / 1e6 / seconds

    def client_cpu(self, phase: str) -> float | None:
        """The client's CPU time, in % of the phase's time on the clock."""
        seconds = self.seconds.get(phase)
        return 100.0 * self.cpu[phase] / seconds if seconds else None

    def per_call(self, phase: str) -> float | None:
        """Events per script call, over every master."""
        calls = sum(self.calls.get(phase, {}).values())
        return self.events[phase] / calls if calls else None

    def redis_usec(self, phase: str) -> float | None:
        """Microseconds of script time per event, over every master."""
        n = self.events.get(phase)
        return sum(self.usec[phase].values()) / n if n else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "where": self.where,
            "masters": self.masters,
            "layout": self.layout.name,
            "topics": list(self.layout.topics),
            "partitions": self.partitions,
            "ordering_keys": KEYS,
            "note": self.layout.note,
            "script_calls": self.calls,
            "script_usec": self.usec,
            "phase_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "client_cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
            "events": self.events,
            "share_per_round_pct": self.round_shares,
            "routing_measured": self.routing,
        }


def steps(repeat: int, routing: bool) -> int:
    """How many numbered steps :func:`measure` takes."""
    return repeat * (6 if routing else 2)


@contextlib.asynccontextmanager
async def _cluster(url: str | None) -> AsyncIterator[str]:
    """The URL of the given cluster, or of a fresh local one, stopped afterwards."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="broker-bench-cluster-") as directory:
        cluster = RedisCluster(Path(directory), masters=MASTERS)
        await asyncio.to_thread(cluster.start)
        try:
            yield cluster.url
        finally:
            cluster.stop()


@contextlib.asynccontextmanager
async def _single(server: RedisServer | None) -> AsyncIterator[str]:
    """The run's redis-server, or a fresh one when the run has none."""
    if server is not None:
        yield server.url
        return
    with tempfile.TemporaryDirectory(prefix="broker-bench-single-") as directory:
        own = RedisServer(Path(directory))
        await asyncio.to_thread(own.start)
        try:
            yield own.url
        finally:
            own.stop()


class _Scratch:
    """Runs a step under a fresh key prefix of a URL, and deletes its keys afterwards."""

    def __init__(self, url: str, masters: Masters) -> None:
        self.url = url
        self.masters = masters

    async def run(self, work: Callable[[str], Awaitable[T]]) -> T:
        prefix = fresh_prefix()
        try:
            return await work(with_prefix(self.url, prefix))
        finally:
            await self.masters.delete_prefix(prefix)


async def measure(
    progress: Progress,
    runs: Runs,
    console: Console,
    *,
    events: int,
    repeat: int,
    batch: int,
    partitions: int,
    server: RedisServer | None,
    cluster_url: str | None = None,
) -> Outcome:
    """Run the scenario's rounds; their rates go to ``runs``, the rest to the outcome.

    Without ``cluster_url`` a local cluster of :data:`MASTERS` masters is started and the
    one-topic runs compare it with ``server`` (or a fresh redis-server); on a cluster given
    by URL the one-topic runs are left out (a single node on this machine would not be
    "the same machine" as that cluster's masters).
    """
    routing = cluster_url is None
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(_cluster(cluster_url))
        masters = await Masters.of(url)
        stack.push_async_callback(masters.close)
        on_cluster = _Scratch(url, masters)
        layout = await on_cluster.run(lambda u: detect_layout(u, partitions))
        outcome = Outcome(
            masters.names,
            layout,
            "local" if cluster_url is None else redact(cluster_url),
            partitions,
            routing,
        )
        if layout.note:
            console.print(f"cluster: {layout.note}", highlight=False)
        single: _Scratch | None = None
        if routing:
            single_url = await stack.enter_async_context(_single(server))
            single_masters = await Masters.of(single_url)
            stack.push_async_callback(single_masters.close)
            single = _Scratch(single_url, single_masters)
        one = topic_layout()
        for r in range(repeat):
            tag = f"{'cluster':<12} round {r + 1}/{repeat}"
            await _round(progress, runs, outcome, tag, on_cluster, single, one, events, batch)
    return outcome


async def _round(
    progress: Progress,
    runs: Runs,
    outcome: Outcome,
    tag: str,
    on_cluster: _Scratch,
    single: _Scratch | None,
    one: Layout,
    n: int,
    batch: int,
) -> None:
    spread, masters = outcome.layout, on_cluster.masters
    result = await progress.step(
        f"{tag} cluster {spread.name}, publish_many",
        lambda: on_cluster.run(lambda u: publish_rate(u, spread, spread.events(n), batch, masters)),
    )
    runs.add("cluster_publish", "spread", result)
    outcome.count("publish", result, n)
    if single is not None:
        for who, where, counted in (("single", single, None), ("one_topic", on_cluster, masters)):
            result = await progress.step(
                f"{tag} {'redis' if who == 'single' else 'cluster'} one topic, publish_many",
                lambda w=where, c=counted: w.run(  # type: ignore[misc]
                    lambda u: publish_rate(u, one, one.events(n), batch, c)
                ),
            )
            runs.add("cluster_publish", who, result)
            if counted is not None:
                outcome.count(f"publish {one.name}", result, n)
    result = await progress.step(
        f"{tag} cluster {spread.name}, drain",
        lambda: on_cluster.run(lambda u: drain_rate(u, spread, spread.events(n), masters)),
    )
    runs.add("cluster_drain", "spread", result)
    outcome.count("drain", result, n)
    if single is not None:
        for who, where, counted in (("single", single, None), ("one_topic", on_cluster, masters)):
            result = await progress.step(
                f"{tag} {'redis' if who == 'single' else 'cluster'} one topic, drain",
                lambda w=where, c=counted: w.run(  # type: ignore[misc]
                    lambda u: drain_rate(u, one, one.events(n), c)
                ),
            )
            runs.add("cluster_drain", who, result)
            if counted is not None:
                outcome.count(f"drain {one.name}", result, n)


def add_rows(results: Results, runs: Runs, outcome: Outcome) -> None:
    """The scenario's rows: rates, each master's share and the spread's verdict, and the
    routing ratios."""
    layout, count = outcome.layout, len(outcome.masters)
    even = 100.0 / count
    target = f"{even:.0f}% +- {TOLERANCE:.0f} points"
    for phase, what in (("publish", "publish_many rate"), ("drain", "drain rate")):
        key = f"cluster_{phase}"
        rate = runs.best(key, "spread")
        row = results.add(Row("cluster", "cluster", f"{what}, {layout.name}", "events/s", rate))
        row.samples = {"ours": runs.samples(key, "spread")}
        row.note = layout.note or f"one topic, configure_topic(partitions={outcome.partitions})"
        row.headline = f"Redis Cluster ({count} masters), {what}, {layout.name}"
        calls = outcome.calls.get(phase, {})
        percent = shares(calls)
        for i, name in enumerate(outcome.masters, 1):
            share = percent.get(name) if sum(calls.values()) else None
            row = results.add(
                Row(
                    "cluster",
                    "cluster",
                    f"master {i}/{count} share of script calls, {phase}",
                    "%",
                    share,
                    False,
                    target,
                )
            )
            row.met = share is not None and abs(share - even) <= TOLERANCE
            row.samples = {"ours": [s.get(name, 0.0) for s in outcome.round_shares.get(phase, [])]}
            row.note = f"{name}: {calls.get(name, 0):,} EVALSHA/EVAL calls"
        off = deviation(percent) if sum(calls.values()) else None
        row = results.add(
            Row(
                "cluster",
                "cluster",
                f"largest master share's distance from {even:.0f}%, {phase}",
                "points",
                off,
                False,
                f"<= {TOLERANCE:.0f} points",
            )
        )
        row.met = off is not None and off <= TOLERANCE
        row.headline = f"Redis Cluster, {layout.name}: spread of the {phase} calls over masters"
        row = results.add(
            Row(
                "cluster",
                "cluster",
                f"busiest master's time in scripts, {phase}",
                "% of the clock",
                outcome.busiest(phase),
                False,
            )
        )
        row.note = "its commandstats usec over the phase's seconds: how busy Redis was"
        row = results.add(
            Row(
                "cluster",
                "cluster",
                f"client process CPU, {phase}",
                "% of the clock",
                outcome.client_cpu(phase),
                False,
            )
        )
        row.note = "time.process_time of the benchmark's process (100% = one core)"
        _cost_rows(results, outcome, phase, layout.name)
    if not outcome.routing:
        return
    for phase, what in (("publish", "publish_many rate"), ("drain", "drain rate")):
        key = f"cluster_{phase}"
        alone, routed = runs.best(key, "single"), runs.best(key, "one_topic")
        row = results.add(Row("cluster", "redis", f"{what}, one topic", "events/s", alone))
        row.samples = {"ours": runs.samples(key, "single")}
        row.note = "single redis-server, same machine, same run"
        row = results.add(
            Row("cluster", "cluster", f"{what}, one topic (one master)", "events/s", routed)
        )
        row.samples = {"ours": runs.samples(key, "one_topic")}
        ratio = routed / alone if routed and alone else None
        row = results.add(Row("cluster", "cluster", f"{what}, cluster / single node", "x", ratio))
        row.note = "the cost of cluster routing: 1.00x is none"
        row.headline = f"Redis Cluster routing cost, {what} (cluster / single node)"
        _cost_rows(results, outcome, f"{phase} one topic", "one topic")


def _cost_rows(results: Results, outcome: Outcome, phase: str, layout: str) -> None:
    """How many events a script call carried in ``phase``, and the Redis time per event."""
    what = phase.split()[0]
    row = results.add(
        Row("cluster", "cluster", f"events per script call, {what}, {layout}", "events", None)
    )
    row.ours = outcome.per_call(phase)
    if outcome.layout.name == layout:
        row.note = "a batch or a claim becomes one script call per partition (topic)"
    row = results.add(
        Row("cluster", "cluster", f"Redis time per event, {what}, {layout}", "µs", None, False)
    )
    row.ours = outcome.redis_usec(phase)
    row.note = "commandstats usec of the script calls, all masters"
