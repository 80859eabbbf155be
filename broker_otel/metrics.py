"""Counters and timings of messages, under the instrument names of the messaging conventions.

``messaging.client.sent.messages`` counts the events of every transport call of a publish
(with ``error.type`` when it failed), ``messaging.client.consumed.messages`` every event
a consumer claimed, and ``messaging.process.duration`` times every handler run, in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.metrics import Meter
from opentelemetry.util.types import AttributeValue

from broker_core import Delivery, Event, Outcome, OutcomeKind
from broker_otel import attributes as attr

__all__ = ["Metrics"]

# The conventions' advice for messaging.process.duration.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class Metrics:
    """The message instruments of one plugin, and the start times of running handlers."""

    def __init__(self, meter: Meter, system: str) -> None:
        self._system = system
        self._sent = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Events sent to the store by publish.",
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Events claimed from the store by a consumer.",
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="How long handlers ran.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._started: dict[Delivery[Any], float] = {}

    def sent(self, topic: str, events: Sequence[Event], error: Exception | None) -> None:
        """Count ``events``, which one transport call to ``topic`` sent, or failed to."""
        attributes: dict[str, AttributeValue] = {
            attr.SYSTEM: self._system,
            attr.DESTINATION: topic,
            attr.OPERATION_TYPE: "send",
            attr.OPERATION_NAME: "send",
        }
        if error is not None:
            attributes[attr.ERROR_TYPE] = attr.error_type(error)
        self._sent.add(len(events), attributes)

    def consumed(self, topic: str, group: str) -> None:
        """Count one event of ``topic`` claimed for ``group``."""
        self._consumed.add(
            1,
            {
                attr.SYSTEM: self._system,
                attr.DESTINATION: topic,
                attr.CONSUMER_GROUP: group,
                attr.OPERATION_TYPE: "receive",
                attr.OPERATION_NAME: "receive",
            },
        )

    def process_started(self, delivery: Delivery[Any]) -> None:
        """Note when the handler of ``delivery`` started."""
        self._started[delivery] = time.perf_counter()

    def process_finished(
        self, delivery: Delivery[Any], outcome: Outcome, exception: BaseException | None
    ) -> None:
        """Record how long the handler of ``delivery`` ran, and what came of it."""
        started = self._started.pop(delivery, None)
        if started is None:
            return
        attributes: dict[str, AttributeValue] = {
            attr.SYSTEM: self._system,
            attr.DESTINATION: delivery.topic,
            attr.CONSUMER_GROUP: delivery.group,
            attr.OPERATION_TYPE: "process",
            attr.OPERATION_NAME: "process",
            attr.OUTCOME: outcome.kind.value,
        }
        if exception is not None and outcome.kind is not OutcomeKind.RELEASED:
            attributes[attr.ERROR_TYPE] = attr.error_type(exception)
        self._duration.record(time.perf_counter() - started, attributes)
