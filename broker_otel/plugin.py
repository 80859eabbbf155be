"""The OpenTelemetry plugin: tracing and metrics on the broker's lifecycle hooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from broker_core import Broker, Delivery, Event, Outcome, hookimpl
from broker_otel.attributes import DEFAULT_SYSTEM
from broker_otel.metrics import Metrics
from broker_otel.queues import QueueGauges
from broker_otel.tracing import Tracing

__all__ = ["OpenTelemetryPlugin"]

_SCOPE = "broker_otel"


class OpenTelemetryPlugin:
    """Traces and metrics of one or more brokers, given to them explicitly::

        otel = OpenTelemetryPlugin(tracer_provider=tracer_provider, meter_provider=meter_provider)
        broker = Broker.from_url(url, group="billing", plugins=[otel])

    :param tracer_provider: where spans go (default: the global provider).
    :param meter_provider: where metrics go (default: the global provider).
    :param link: make each ``process`` span the root of a new trace, linked to the
        producer's span, instead of its child.
    :param system: the ``messaging.system`` attribute.
    :param queue_stats_interval: the least seconds between two reads of the queue
        gauges' counts from the store (see :meth:`observe_queues`).
    :param max_pending_sends: how many send spans may wait for their transport call;
        beyond, the oldest is ended as never sent (a publish refused or cancelled after
        its headers were added is never reported).
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        link: bool = False,
        system: str = DEFAULT_SYSTEM,
        queue_stats_interval: float = 10.0,
        max_pending_sends: int = 10_000,
    ) -> None:
        if max_pending_sends < 1:
            raise ValueError(f"max_pending_sends must be at least 1, got {max_pending_sends}")
        tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self._tracing = Tracing(tracer, system, link=link, max_pending=max_pending_sends)
        self._metrics = Metrics(meter, system)
        self._queues = QueueGauges(meter, system, queue_stats_interval)

    async def observe_queues(self, broker: Broker) -> None:
        """Report ``broker``'s ready, leased, delayed and dead counts as gauges.

        Per topic and group, as ``broker.stats()`` returns them. Call it on the loop the
        broker runs on, once it is connected; it returns once the first counts are in.
        Later collections report counts at most ``queue_stats_interval`` seconds (and one
        collection) old, and the observing ends with the broker's event loop.
        """
        await self._queues.observe(broker)

    @hookimpl
    def broker_publish_headers(
        self, topic: str, event: Event, key: str | None
    ) -> Mapping[str, str] | None:
        """Start the event's send span; its context travels in the headers."""
        return self._tracing.send_started(topic, event, key)

    @hookimpl
    def broker_publish_after(
        self, topic: str, events: Sequence[Event], copies: int | None, error: Exception | None
    ) -> None:
        """End the events' send spans and count them."""
        self._tracing.send_finished(events, copies, error)
        self._metrics.sent(topic, events, error)

    @hookimpl
    def broker_delivery_claimed(self, topic: str, group: str) -> None:
        """Count a consumed event."""
        self._metrics.consumed(topic, group)

    @hookimpl
    def broker_handler_started(self, delivery: Delivery[Any]) -> None:
        """Start the delivery's process span, current while its handler runs."""
        self._tracing.process_started(delivery)
        self._metrics.process_started(delivery)

    @hookimpl
    def broker_handler_finished(
        self, delivery: Delivery[Any], outcome: Outcome, exception: BaseException | None
    ) -> None:
        """Record the outcome on the process span, end it, and time the handler."""
        self._tracing.process_finished(delivery, outcome, exception)
        self._metrics.process_finished(delivery, outcome, exception)
