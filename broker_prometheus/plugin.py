"""The Prometheus plugin: counters and a histogram fed by the lifecycle hooks.

Every hook implementation is a few dictionary lookups and an increment, on the event
loop: nothing here waits, except ending the queue gauges' task when a consumer stops.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from broker_core.hooks import Outcome, OutcomeKind, hookimpl
from broker_prometheus.queues import QueueGauges

if TYPE_CHECKING:
    from broker_core.broker import Broker
    from broker_core.delivery import Delivery
    from broker_core.events import Event

__all__ = ["DEFAULT_REFRESH_INTERVAL", "PrometheusMetrics"]

DEFAULT_REFRESH_INTERVAL = 5.0
"""Seconds between two reads of the queue counts from the store."""

_EVENT = ("topic", "group", "event_type")

M = TypeVar("M", Counter, Histogram)


class _Labelled(Generic[M]):
    """A metric's children by their label values, each looked up once through ``labels``.

    ``labels`` checks its arguments and takes a lock on every call, which costs more
    than the increment itself: on every event, a dictionary lookup is cheaper.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class PrometheusMetrics:
    """A broker plugin that keeps the broker's metrics in a Prometheus registry.

    Give it to a broker, and the broker to it for the queue gauges::

        metrics = PrometheusMetrics()
        broker = Broker.from_url(url, group="billing", plugins=[metrics])
        metrics.watch_queues(broker)

    then expose :attr:`registry` (``prometheus_client.start_http_server(port,
    registry=metrics.registry)``, or ``broker run --metrics-port``). The metrics are
    listed in docs/operations.md.

    :param registry: where the metrics are registered; a new registry of their own by
        default, so that two plugins never collide (pass ``prometheus_client.REGISTRY``
        to join the process's default one).
    :param refresh_interval: seconds between two reads of the queue counts.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.queues = QueueGauges(self.registry, refresh_interval)
        """The queue gauges, refreshed while a consumer runs."""

        def counter(name: str, text: str) -> _Labelled[Counter]:
            return _Labelled(Counter(name, text, _EVENT, registry=self.registry))

        self._published = counter(
            "broker_events_published_total",
            "Events handed to the store by publish (group is empty), duplicates included.",
        )
        self._delivered = counter(
            "broker_events_delivered_total",
            "Deliveries that reached a handler, redeliveries included.",
        )
        self._acked = counter("broker_events_acked_total", "Deliveries whose ack the store took.")
        self._retried = counter(
            "broker_events_retried_total", "Deliveries whose retry the store took."
        )
        self._dead = counter(
            "broker_events_dead_lettered_total",
            "Deliveries whose handler failed on the last attempt, dead-lettered by the store.",
        )
        self._settled = {
            OutcomeKind.ACKED: self._acked,
            OutcomeKind.RETRIED: self._retried,
            OutcomeKind.DEAD: self._dead,
        }
        self._duration = _Labelled(
            Histogram(
                "broker_handler_duration_seconds",
                "Seconds from a handler's start to its return or exception, by outcome.",
                (*_EVENT, "outcome"),
                registry=self.registry,
            )
        )
        # When each running handler started; Delivery compares by identity.
        self._started: dict[Delivery[Any], float] = {}

    def watch_queues(self, broker: Broker) -> None:
        """Report the consumers' queues as ``broker_queue_events``, read from ``broker``'s store."""
        self.queues.watch(broker)

    @hookimpl
    def broker_publish_after(
        self, topic: str, events: Sequence[Event], error: Exception | None
    ) -> None:
        """Count the events of a publish the store took."""
        if error is not None:
            return
        for event_type, count in collections.Counter(e.type_name for e in events).items():
            self._published(topic, "", event_type).inc(count)

    @hookimpl
    def broker_consumer_started(self, group: str, topics: Sequence[str]) -> None:
        """Start counting the consumer's queues."""
        self.queues.consumer_started(group, topics)

    @hookimpl
    def broker_handler_started(self, delivery: Delivery[Any]) -> None:
        """Count the delivery and start its handler's clock."""
        self._delivered(delivery.topic, delivery.group, delivery.event.type_name).inc()
        self._started[delivery] = time.perf_counter()

    @hookimpl
    def broker_handler_finished(self, delivery: Delivery[Any], outcome: Outcome) -> None:
        """Observe how long the handler ran."""
        began = self._started.pop(delivery, None)
        if began is None:  # handler_started's entry was dropped when a consumer stopped
            return
        self._duration(
            delivery.topic, delivery.group, delivery.event.type_name, outcome.kind.value
        ).observe(time.perf_counter() - began)

    @hookimpl
    def broker_delivery_settled(self, delivery: Delivery[Any], outcome: Outcome) -> None:
        """Count the ack, retry or dead-lettering the store took."""
        counter = self._settled.get(outcome.kind)
        if counter is not None:
            counter(delivery.topic, delivery.group, delivery.event.type_name).inc()

    @hookimpl
    async def broker_consumer_stopped(self, group: str, topics: Sequence[str]) -> None:
        """Stop counting the consumer's queues; forget the handlers it abandoned."""
        # After abort(), handlers that started are never finished.
        for delivery in [d for d in self._started if d.group == group and d.topic in topics]:
            del self._started[delivery]
        await self.queues.consumer_stopped(group, topics)
