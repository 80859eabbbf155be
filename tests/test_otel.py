"""OpenTelemetry on every transport: one trace across services, outcomes on spans, metrics.

The SDK's in-memory exporter and reader collect what the plugin reports; each test asserts
the spans (names, kinds, parents, attributes, events) or data points a scenario produces.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from broker_core import (
    Broker,
    Delivery,
    Event,
    EventTooLarge,
    RetryPolicy,
    Transport,
    TransportError,
)
from broker_core.plugins import make_transport
from broker_otel import OpenTelemetryPlugin

NO_WAIT = RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, jitter=0)
REPOSITORY = Path(__file__).resolve().parent.parent


class TracedOrder(Event):
    topic: ClassVar[str] = "orders"
    key_field: ClassVar[str | None] = "order_id"
    order_id: str


class TracedShipment(Event):
    topic: ClassVar[str] = "shipments"
    order_id: str


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
async def make(broker_url: str) -> AsyncIterator[Callable[..., Awaitable[Broker]]]:
    """Build connected brokers on one store; all closed at the end."""
    brokers: list[Broker] = []

    async def build(plugin: OpenTelemetryPlugin, **options: Any) -> Broker:
        options.setdefault("retry", NO_WAIT)
        options.setdefault("poll_interval", 0.05)
        broker = Broker.from_url(broker_url, plugins=[plugin], **options)
        brokers.append(broker)
        await broker.connect()
        return broker

    yield build
    for broker in brokers:
        await broker.close()


async def _until(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _span_id(span: ReadableSpan) -> int:
    return span.get_span_context().span_id


def _trace_id(span: ReadableSpan) -> int:
    return span.get_span_context().trace_id


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """The data points of instrument ``name``, each with its attributes."""
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (dict(point.attributes or {}), point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_a_trace_crosses_two_services_as_parents_and_children(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Each service has its plugin, as separate processes would; the spans meet in one place.
    def plugin() -> OpenTelemetryPlugin:
        return OpenTelemetryPlugin(tracer_provider=tracer_provider)

    checkout, shipping, notify = (
        await make(plugin()),
        await make(plugin(), group="shipping"),
        await make(plugin(), group="notify"),
    )

    @shipping.on(TracedOrder)
    async def ship(event: TracedOrder) -> None:
        await shipping.publish(TracedShipment(order_id=event.order_id))

    notified: list[dict[str, str]] = []

    @notify.on(TracedShipment)
    async def tell(event: TracedShipment) -> None:
        notified.append(event.headers)

    await shipping.subscribe("orders")
    await notify.subscribe("shipments")
    order = TracedOrder(order_id="o-1")
    with tracer_provider.get_tracer("checkout").start_as_current_span("POST /orders") as request:
        assert await checkout.publish(order) == 1
    assert await shipping.pick()
    assert await notify.pick()

    [root] = _named(exporter, "POST /orders")
    [send_order] = _named(exporter, "send orders")
    [process_order] = _named(exporter, "process orders")
    [send_shipped] = _named(exporter, "send shipments")
    [process_shipped] = _named(exporter, "process shipments")
    chain = [root, send_order, process_order, send_shipped, process_shipped]
    assert {_trace_id(span) for span in chain} == {request.get_span_context().trace_id}
    assert [_parent_of(span) for span in chain] == [None, *map(_span_id, chain[:-1])]
    assert [span.kind for span in chain[1:]] == [
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    ]
    # The context each event carried is its send span's.
    carried = send_shipped.get_span_context()
    assert notified[0]["traceparent"] == (
        f"00-{carried.trace_id:032x}-{carried.span_id:016x}-{carried.trace_flags:02x}"
    )
    assert send_order.attributes == {
        "messaging.system": "embedded-event-broker",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": order.id,
        "broker.message.key": "o-1",
        "broker.publish.copies": 1,
    }
    assert process_order.attributes == {
        "messaging.system": "embedded-event-broker",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "shipping",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": order.id,
        "broker.delivery.attempt": 1,
        "broker.message.key": "o-1",
        "broker.outcome": "acked",
    }
    assert "broker.message.key" not in (process_shipped.attributes or {})
    assert [event.name for event in process_order.events] == ["broker.acked"]
    assert process_order.status.status_code is StatusCode.UNSET


async def test_retries_and_the_dead_letter_are_recorded_on_their_spans(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plugin = OpenTelemetryPlugin(tracer_provider=tracer_provider)
    broker = await make(plugin, group="g")

    @broker.on(TracedOrder)
    async def fail(event: TracedOrder) -> None:
        raise ValueError("no stock")

    await broker.subscribe("orders")
    await broker.publish(TracedOrder(order_id="o-1"))
    assert await broker.pick()
    assert await broker.pick()
    [send] = _named(exporter, "send orders")
    retried, dead = _named(exporter, "process orders")
    assert [_parent_of(retried), _parent_of(dead)] == [_span_id(send)] * 2
    for span, attempt, outcome in ((retried, 1, "retried"), (dead, 2, "dead")):
        attributes = span.attributes or {}
        assert attributes["broker.delivery.attempt"] == attempt
        assert attributes["broker.outcome"] == outcome
        assert attributes["error.type"] == "ValueError"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ValueError: no stock"
        assert [event.name for event in span.events] == ["exception", f"broker.{outcome}"]
    assert dict(retried.events[1].attributes or {}) == {"broker.retry.delay": 0.0}
    assert [d.event_id for d in await broker.dead_letters("orders")] == [
        (send.attributes or {})["messaging.message.id"]
    ]


async def test_a_handler_cut_short_by_the_shutdown_is_released_not_failed(
    make: Any,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    plugin = OpenTelemetryPlugin(tracer_provider=tracer_provider)
    broker = await make(plugin, group="g", shutdown_grace=0.05)
    started = asyncio.Event()

    @broker.on(TracedOrder)
    async def handle(event: TracedOrder) -> None:
        started.set()
        await asyncio.sleep(10)

    await broker.subscribe("orders")
    await broker.publish(TracedOrder(order_id="o-1"))
    running = asyncio.create_task(broker.run())
    try:
        await asyncio.wait_for(started.wait(), 5)
    finally:
        broker.stop()
        await asyncio.wait_for(running, 5)
    [process] = _named(exporter, "process orders")
    assert (process.attributes or {})["broker.outcome"] == "released"
    assert "error.type" not in (process.attributes or {})
    assert process.status.status_code is StatusCode.UNSET
    assert [event.name for event in process.events] == ["broker.released"]
    assert "ended span" not in caplog.text  # ended once


async def test_a_plain_function_handler_runs_in_its_process_span(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = await make(OpenTelemetryPlugin(tracer_provider=tracer_provider), group="g")
    current: list[SpanContext] = []

    @broker.on(TracedOrder)
    def handle(event: TracedOrder) -> None:  # in a worker thread
        current.append(trace.get_current_span().get_span_context())

    await broker.subscribe("orders")
    await broker.publish(TracedOrder(order_id="o-1"))
    assert await broker.pick()
    [process] = _named(exporter, "process orders")
    assert current == [process.get_span_context()]
    # Once the handler finished, its span is no longer the current one.
    assert not trace.get_current_span().get_span_context().is_valid


class PublishFails:
    """A transport whose publish fails as an outage would."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def publish(self, *args: Any, **kwargs: Any) -> int:
        raise TransportError("store unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_failed_transport_call_ends_its_send_spans_as_errors(
    broker_url: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    plugin = OpenTelemetryPlugin(tracer_provider=tracer_provider, meter_provider=meter_provider)
    transport = cast(Transport, PublishFails(make_transport(broker_url)))
    async with Broker(transport, plugins=[plugin]) as broker:
        with pytest.raises(TransportError):
            await broker.publish_many([TracedOrder(order_id="o-1"), TracedOrder(order_id="o-2")])
    spans = _named(exporter, "send orders")
    assert len(spans) == 2
    for span in spans:
        assert (span.attributes or {})["error.type"] == "broker_core.errors.TransportError"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "store unreachable"
    [(attributes, sent)] = _points(reader, "messaging.client.sent.messages")
    assert (attributes["error.type"], sent.value) == ("broker_core.errors.TransportError", 2)


async def test_with_link_a_process_span_starts_a_trace_linked_to_its_producer(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    publisher = await make(OpenTelemetryPlugin(tracer_provider=tracer_provider))
    consumer = await make(
        OpenTelemetryPlugin(tracer_provider=tracer_provider, link=True), group="g"
    )
    handled: list[str] = []

    @consumer.on(TracedOrder)
    async def handle(event: TracedOrder) -> None:
        handled.append(event.order_id)

    await consumer.subscribe("orders")
    await publisher.publish(TracedOrder(order_id="o-1"))
    running = asyncio.create_task(consumer.run())
    try:
        await _until(lambda: bool(_named(exporter, "process orders")))
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 5)
    [send] = _named(exporter, "send orders")
    [process] = _named(exporter, "process orders")
    assert process.parent is None
    assert _trace_id(process) != _trace_id(send)
    [link] = process.links
    assert (link.context.trace_id, link.context.span_id) == (_trace_id(send), _span_id(send))
    assert handled == ["o-1"]


async def test_a_failed_publish_and_a_refused_one_end_their_send_spans_as_errors(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    plugin = OpenTelemetryPlugin(tracer_provider=tracer_provider, max_pending_sends=1)
    broker = await make(plugin, max_event_bytes=400)
    with pytest.raises(EventTooLarge):
        await broker.publish(TracedShipment(order_id="x" * 400))
    assert _named(exporter, "send shipments") == []  # never reported: it waits
    await broker.publish(TracedShipment(order_id="o-2"))
    refused, sent = _named(exporter, "send shipments")
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.status.description == "publish refused or cancelled before it was sent"
    assert sent.status.status_code is StatusCode.UNSET
    assert (sent.attributes or {})["broker.publish.copies"] == 0  # nobody subscribed


async def test_publish_many_ends_one_send_span_per_event(
    make: Any, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = await make(OpenTelemetryPlugin(tracer_provider=tracer_provider), group="g")
    await broker.subscribe("orders")
    events = [
        TracedOrder(order_id="o-1"),
        TracedOrder(order_id="o-2"),
        TracedShipment(order_id="o-1"),
    ]
    assert await broker.publish_many(events) == 2
    spans = _named(exporter, "send orders") + _named(exporter, "send shipments")
    assert sorted((s.attributes or {})["messaging.message.id"] for s in spans) == sorted(
        e.id for e in events
    )
    assert [(s.attributes or {}).get("messaging.batch.message_count") for s in spans] == [
        2,
        2,
        None,
    ]


async def test_messages_are_counted_and_handlers_timed(
    make: Any, meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    broker = await make(OpenTelemetryPlugin(meter_provider=meter_provider), group="g")

    @broker.on(TracedOrder)
    async def handle(event: TracedOrder, delivery: Delivery[TracedOrder]) -> None:
        if event.order_id == "bad" and delivery.attempt == 1:
            raise ValueError("once")

    await broker.subscribe("orders")
    await broker.publish_many([TracedOrder(order_id="good"), TracedOrder(order_id="bad")])
    for _ in range(3):
        assert await broker.pick()
    base = {"messaging.system": "embedded-event-broker", "messaging.destination.name": "orders"}
    [(sent_attributes, sent)] = _points(reader, "messaging.client.sent.messages")
    assert sent_attributes == {
        **base,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    assert sent.value == 2
    [(consumed_attributes, consumed)] = _points(reader, "messaging.client.consumed.messages")
    assert consumed_attributes == {
        **base,
        "messaging.consumer.group.name": "g",
        "messaging.operation.type": "receive",
        "messaging.operation.name": "receive",
    }
    assert consumed.value == 3
    durations = {
        (a["broker.outcome"], a.get("error.type")): point.count
        for a, point in _points(reader, "messaging.process.duration")
    }
    assert durations == {("acked", None): 2, ("retried", "ValueError"): 1}


async def test_queue_gauges_report_stats_read_at_a_bounded_rate(
    make: Any, meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    plugin = OpenTelemetryPlugin(meter_provider=meter_provider, queue_stats_interval=3600)
    broker = await make(plugin, group="g")

    @broker.on(TracedOrder)
    async def handle(event: TracedOrder) -> None:
        pass

    await broker.subscribe("orders")
    await broker.publish_many([TracedOrder(order_id=str(n)) for n in range(3)])
    reads: list[int] = []
    stats = broker.stats

    async def counted(topic: str | None = None) -> Any:
        reads.append(1)
        return await stats(topic)

    broker.stats = counted
    await plugin.observe_queues(broker)
    assert await broker.pick()
    where = {
        "messaging.system": "embedded-event-broker",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "g",
    }
    for _ in range(3):
        for state, value in (("ready", 3), ("leased", 0), ("delayed", 0), ("dead", 0)):
            assert [(a, p.value) for a, p in _points(reader, f"broker.queue.{state}")] == [
                (where, value)
            ]
    await asyncio.sleep(0.1)  # a read, had one been scheduled, would have run by now
    # Read once, when observing began: twelve gauge collections asked the store nothing.
    assert len(reads) == 1


async def test_due_queue_gauges_refresh_once_for_all_of_them(
    make: Any, meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    plugin = OpenTelemetryPlugin(meter_provider=meter_provider, queue_stats_interval=0)
    broker = await make(plugin, group="g")

    @broker.on(TracedOrder)
    async def handle(event: TracedOrder) -> None:
        pass

    await broker.subscribe("orders")
    await broker.publish_many([TracedOrder(order_id=str(n)) for n in range(3)])
    await plugin.observe_queues(broker)
    await plugin.observe_queues(broker)  # observed once however often asked
    assert await broker.pick()

    def ready() -> list[int]:
        return [point.value for _, point in _points(reader, "broker.queue.ready")]

    # This collection reports the counts read so far, and schedules a read of new ones.
    assert ready() == [3]
    await _until(lambda: ready() == [2])


def test_importing_the_broker_does_not_import_opentelemetry() -> None:
    # (Not broker_redis: redis-py imports OpenTelemetry itself when it is installed.)
    check = (
        "import sys, broker_core, broker_memory; "
        "sys.exit(any(m.split('.')[0] == 'opentelemetry' for m in sys.modules))"
    )
    subprocess.run([sys.executable, "-c", check], cwd=REPOSITORY, check=True, timeout=60)
