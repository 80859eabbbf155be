"""The Prometheus plugin on every transport: what its registry holds after each scenario.

Each broker gets a plugin of its own, with a registry of its own; the tests read the
registry's samples as a scrape would. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, cast

import pytest
from checkout import REPOSITORY, checkout_env

from broker_core import Broker, Delivery, Event, RetryPolicy, Transport, TransportError
from broker_core.plugins import make_transport
from broker_prometheus import STATES, PrometheusMetrics

NO_WAIT = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=0)
LATER = RetryPolicy(max_attempts=3, initial_delay=60, max_delay=60, jitter=0)


class Job(Event):
    topic: ClassVar[str] = "jobs"
    n: int


class Doomed(Event):
    topic: ClassVar[str] = "jobs"


class Flaky(Event):
    topic: ClassVar[str] = "jobs"


Make = Callable[..., Awaitable[tuple[Broker, PrometheusMetrics]]]


@pytest.fixture
async def make(broker_url: str) -> AsyncIterator[Make]:
    """Connected brokers of group ``g`` on one store, each with a metrics plugin of its own."""
    brokers: list[Broker] = []

    async def build(
        refresh_interval: float = 5.0, **options: Any
    ) -> tuple[Broker, PrometheusMetrics]:
        options.setdefault("group", "g")
        options.setdefault("retry", NO_WAIT)
        options.setdefault("poll_interval", 0.05)
        metrics = PrometheusMetrics(refresh_interval=refresh_interval)
        broker = Broker.from_url(broker_url, plugins=[metrics], **options)
        metrics.watch_queues(broker)
        brokers.append(broker)
        await broker.connect()
        return broker, metrics

    yield build
    for broker in brokers:
        await broker.close()


def _sample(metrics: PrometheusMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _events(metrics: PrometheusMetrics, counter: str, event_type: str = "Job") -> float | None:
    """The value of ``broker_events_<counter>_total`` for ``event_type`` on jobs/g."""
    group = "" if counter == "published" else "g"
    return _sample(
        metrics, f"broker_events_{counter}_total", topic="jobs", group=group, event_type=event_type
    )


def _handled(metrics: PrometheusMetrics, outcome: str, event_type: str = "Job") -> float | None:
    """How many handler durations of ``event_type`` on jobs/g were observed with ``outcome``."""
    return _sample(
        metrics,
        "broker_handler_duration_seconds_count",
        topic="jobs",
        group="g",
        event_type=event_type,
        outcome=outcome,
    )


def _queue(metrics: PrometheusMetrics) -> dict[str, float | None]:
    return {
        state: _sample(metrics, "broker_queue_events", topic="jobs", group="g", state=state)
        for state in STATES
    }


async def test_a_handled_event_is_published_delivered_acked_and_timed(make: Make) -> None:
    broker, metrics = await make()

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await asyncio.sleep(0.02)

    await broker.subscribe("jobs")
    await broker.publish_many([Job(n=1), Job(n=2)])
    assert await broker.pick()
    assert await broker.pick()
    assert _events(metrics, "published") == 2
    assert _events(metrics, "delivered") == 2
    assert _events(metrics, "acked") == 2
    assert _events(metrics, "retried") is None
    assert _events(metrics, "dead_lettered") is None
    assert _handled(metrics, "acked") == 2
    seconds = _sample(
        metrics,
        "broker_handler_duration_seconds_sum",
        topic="jobs",
        group="g",
        event_type="Job",
        outcome="acked",
    )
    assert seconds is not None and seconds >= 0.04


async def test_a_retried_then_acked_event(make: Make) -> None:
    broker, metrics = await make()

    @broker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        if delivery.attempt == 1:
            raise ValueError("boom")

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    assert await broker.pick()
    assert _events(metrics, "retried") == 1
    assert _events(metrics, "acked") is None
    assert await broker.pick()
    assert _events(metrics, "published") == 1
    assert _events(metrics, "delivered") == 2
    assert _events(metrics, "retried") == 1
    assert _events(metrics, "acked") == 1
    assert _handled(metrics, "retried") == 1
    assert _handled(metrics, "acked") == 1


async def test_a_dead_lettered_event(make: Make) -> None:
    broker, metrics = await make(max_attempts=1)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        raise ValueError("boom")

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    assert await broker.pick()
    assert _events(metrics, "delivered") == 1
    assert _events(metrics, "dead_lettered") == 1
    assert _events(metrics, "retried") is None
    assert _events(metrics, "acked") is None
    assert _handled(metrics, "dead") == 1


async def test_the_counters_keep_event_types_apart(make: Make) -> None:
    broker, metrics = await make()

    @broker.on("jobs")
    async def handle(event: Event) -> None:
        pass

    await broker.subscribe("jobs")
    await broker.publish_many([Job(n=1), Doomed(), Job(n=2)])
    for _ in range(3):
        assert await broker.pick()
    assert _events(metrics, "published") == 2
    assert _events(metrics, "published", "Doomed") == 1
    assert _events(metrics, "acked") == 2
    assert _events(metrics, "acked", "Doomed") == 1


class Unreachable:
    """A transport whose publish fails as an outage would; the rest is the inner one's."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def publish(self, *args: Any, **kwargs: Any) -> int:
        raise TransportError("store unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_failed_publish_is_not_counted(broker_url: str) -> None:
    metrics = PrometheusMetrics()
    transport = cast(Transport, Unreachable(make_transport(broker_url)))
    async with Broker(transport, plugins=[metrics]) as broker:
        with pytest.raises(TransportError):
            await broker.publish(Job(n=1))
    assert _events(metrics, "published") is None


async def _until(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


async def test_the_queue_gauges_follow_the_store_while_the_consumer_runs(make: Make) -> None:
    broker, metrics = await make(refresh_interval=0.05, concurrency=1)
    release = asyncio.Event()

    @broker.on(Doomed, max_attempts=1)
    async def doom(event: Doomed) -> None:
        raise ValueError("doomed")

    @broker.on(Flaky, retry=LATER)
    async def flake(event: Flaky) -> None:
        raise ValueError("later")

    @broker.on(Job)
    async def block(event: Job) -> None:
        await release.wait()

    await broker.subscribe("jobs")
    await broker.publish(Doomed())
    assert await broker.pick()  # dead
    await broker.publish(Flaky())
    assert await broker.pick()  # delayed by a minute
    await broker.publish_many([Job(n=1), Job(n=2), Job(n=3)])
    # Nothing is read before a consumer runs.
    assert _queue(metrics) == dict.fromkeys(STATES)

    running = asyncio.create_task(broker.run())
    try:
        # One slot: one Job held by its handler, the other two waiting.
        expected = {"ready": 2.0, "leased": 1.0, "delayed": 1.0, "dead": 1.0}
        await _until(lambda: _queue(metrics) == expected)
        assert metrics.queues.refreshing
        release.set()
        await _until(lambda: _queue(metrics)["ready"] == 0 and _queue(metrics)["leased"] == 0)
    finally:
        broker.stop()
        await asyncio.wait_for(running, 5)

    # Stopped: no task reads the store any more, and no stale counts are left behind.
    assert not metrics.queues.refreshing
    assert _queue(metrics) == dict.fromkeys(STATES)
    await broker.publish(Job(n=4))
    await asyncio.sleep(0.2)
    assert _queue(metrics) == dict.fromkeys(STATES)


async def test_refresh_reads_the_counts_of_the_consumed_queues_now(make: Make) -> None:
    broker, metrics = await make(refresh_interval=3600, concurrency=1)
    started, release = asyncio.Event(), asyncio.Event()

    @broker.on(Job)
    async def block(event: Job) -> None:
        started.set()
        await release.wait()

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    running = asyncio.create_task(broker.run())
    try:
        async with asyncio.timeout(5):
            await started.wait()
        await broker.publish_many([Job(n=2), Job(n=3)])
        # The task read the counts as the consumer started; its next read is an hour away.
        await metrics.queues.refresh()
        assert _queue(metrics) == {"ready": 2.0, "leased": 1.0, "delayed": 0.0, "dead": 0.0}
    finally:
        release.set()
        broker.stop()
        await asyncio.wait_for(running, 5)


async def test_one_task_reads_the_queues_of_every_consumer_until_the_last_stops(
    broker_url: str,
) -> None:
    metrics = PrometheusMetrics(refresh_interval=0.05)
    first, second = (
        Broker.from_url(broker_url, group=group, plugins=[metrics], poll_interval=0.05)
        for group in ("g", "h")
    )
    metrics.watch_queues(first)
    for broker in (first, second):

        @broker.on(Job)
        async def handle(event: Job) -> None:
            pass

    def dead(group: str) -> float | None:
        return _sample(metrics, "broker_queue_events", topic="jobs", group=group, state="dead")

    async with first, second:
        runs = [asyncio.create_task(broker.run()) for broker in (first, second)]
        try:
            await _until(lambda: dead("g") == 0 and dead("h") == 0)
            second.stop()
            await asyncio.wait_for(runs[1], 5)
            # The stopped group's series are gone and stay gone, though its queue fills;
            # the task goes on for the other group.
            assert dead("h") is None
            await first.publish(Job(n=1))
            await asyncio.sleep(0.3)
            assert metrics.queues.refreshing
            assert (
                _sample(metrics, "broker_queue_events", topic="jobs", group="h", state="ready")
                is None
            )
            assert dead("g") == 0
        finally:
            first.stop()
            await asyncio.wait_for(runs[0], 5)
    assert not metrics.queues.refreshing
    assert dead("g") is None


async def test_without_a_watched_broker_there_are_counters_and_no_queue_gauges(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PrometheusMetrics(refresh_interval=0.05)
    broker = Broker.from_url(broker_url, group="g", plugins=[metrics], poll_interval=0.05)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        with caplog.at_level(logging.WARNING, logger="broker.prometheus"):
            running = asyncio.create_task(broker.run())
            try:
                await _until(lambda: _events(metrics, "acked") == 1)
            finally:
                broker.stop()
                await asyncio.wait_for(running, 5)
    assert "queue gauges need PrometheusMetrics.watch_queues(broker)" in caplog.text
    assert not metrics.queues.refreshing
    assert _queue(metrics) == dict.fromkeys(STATES)


def test_importing_broker_core_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, broker_core, broker_core.cli, broker_memory, broker_redis\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=checkout_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_metric_is_documented_in_the_prometheus_section() -> None:
    text = (REPOSITORY / "docs" / "operations.md").read_text()
    section = text.split("\n## Prometheus\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(broker_\w+)` \|", section, flags=re.MULTILINE))
    registry = PrometheusMetrics().registry
    # A counter's family is named without _total; its samples, as exposed, with it.
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry.collect()
    }
    assert documented == exposed
