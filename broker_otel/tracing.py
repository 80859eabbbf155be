"""Spans of publishing and handling, joined by the W3C trace context events carry.

Publishing an event starts a ``send <topic>`` PRODUCER span, when its headers are asked
for, and writes the span's context into them (``traceparent``, ``tracestate``); the span
ends when the transport call that sent the event returned. Handling a delivery runs in a
``process <topic>`` CONSUMER span, the child of the context its event carries (or, with
``link=True``, the root of a trace of its own, linked to it), current while the handler
runs: what the handler publishes continues the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import Token
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from broker_core import Delivery, Event, Outcome, OutcomeKind
from broker_otel import attributes as attr

__all__ = ["Tracing"]

# Fixed, not the global propagator: the headers are this broker's wire format, which every
# consumer must read the same way whatever the process configured.
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = "traceparent"


class Tracing:
    """The spans of one plugin: sends awaiting their transport call, handlers running."""

    def __init__(self, tracer: Tracer, system: str, *, link: bool, max_pending: int) -> None:
        self._tracer = tracer
        self._system = system
        self._link = link
        self._max_pending = max_pending
        # By the traceparent each event was sent with: the publish hooks see the event
        # again only as the copy that carries it.
        self._pending: dict[str, Span] = {}
        self._running: dict[Delivery[Any], tuple[Span, Token[context.Context]]] = {}

    # -- publishing ----------------------------------------------------------------------

    def send_started(self, topic: str, event: Event, key: str | None) -> dict[str, str] | None:
        """Start the send span of ``event``; the headers that carry its context."""
        attributes: dict[str, AttributeValue] = {
            attr.SYSTEM: self._system,
            attr.DESTINATION: topic,
            attr.OPERATION_TYPE: "send",
            attr.OPERATION_NAME: "send",
            attr.MESSAGE_ID: event.id,
        }
        if key is not None:
            attributes[attr.MESSAGE_KEY] = key
        span = self._tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        parent = headers.get(_TRACEPARENT)
        if parent is None:
            # A span without a valid context (a no-op tracer) has nothing to carry.
            span.end()
            return None
        if len(self._pending) >= self._max_pending:
            self._give_up_oldest()
        self._pending[parent] = span
        return headers

    def _give_up_oldest(self) -> None:
        # Sends that are never reported (the publish was refused after its headers were
        # added, or cancelled mid-call) would otherwise be held for ever.
        oldest = next(iter(self._pending))
        span = self._pending.pop(oldest)
        span.set_status(Status(StatusCode.ERROR, "publish refused or cancelled before it was sent"))
        span.end()

    def send_finished(
        self, events: Sequence[Event], copies: int | None, error: Exception | None
    ) -> None:
        """End the send spans of ``events``, which one transport call sent (or failed to)."""
        for event in events:
            span = self._pending.pop(event.headers.get(_TRACEPARENT, ""), None)
            if span is None:
                continue
            if len(events) > 1:
                span.set_attribute(attr.BATCH_COUNT, len(events))
            if error is not None:
                _failed(span, error, str(error))
            elif copies is not None:
                span.set_attribute(attr.COPIES, copies)
            span.end()

    # -- handling ------------------------------------------------------------------------

    def process_started(self, delivery: Delivery[Any]) -> None:
        """Start the process span of ``delivery`` and make it current for its handler."""
        # From an empty context: the consumer's own (its loop's) is not the event's cause.
        producer = _PROPAGATOR.extract(delivery.event.headers, context=context.Context())
        links: list[Link] = []
        if self._link:
            sent = trace.get_current_span(producer).get_span_context()
            if sent.is_valid:
                links.append(Link(sent))
            producer = context.Context()
        attributes: dict[str, AttributeValue] = {
            attr.SYSTEM: self._system,
            attr.DESTINATION: delivery.topic,
            attr.CONSUMER_GROUP: delivery.group,
            attr.OPERATION_TYPE: "process",
            attr.OPERATION_NAME: "process",
            attr.MESSAGE_ID: delivery.event_id,
            attr.ATTEMPT: delivery.attempt,
        }
        if delivery.key is not None:
            attributes[attr.MESSAGE_KEY] = delivery.key
        span = self._tracer.start_span(
            f"process {delivery.topic}",
            context=producer,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        # The hooks run in the delivery's task, which then runs the handler (a plain one
        # in a thread, with a copy of this context): its publishes become children.
        token = context.attach(trace.set_span_in_context(span))
        self._running[delivery] = (span, token)

    def process_finished(
        self, delivery: Delivery[Any], outcome: Outcome, exception: BaseException | None
    ) -> None:
        """Record what came of ``delivery`` on its process span and end it."""
        running = self._running.pop(delivery, None)
        if running is None:
            return
        span, token = running
        context.detach(token)
        kind = outcome.kind
        # A handler cancelled by the consumer's shutdown did not fail: its event goes back.
        if exception is not None and kind is not OutcomeKind.RELEASED:
            _failed(span, exception, outcome.error)
        span.set_attribute(attr.OUTCOME, kind.value)
        details: dict[str, AttributeValue] = {}
        if outcome.delay is not None:
            details[attr.RETRY_DELAY] = outcome.delay
        span.add_event(f"broker.{kind.value}", details)
        span.end()


def _failed(span: Span, exc: BaseException, description: str | None) -> None:
    span.set_attribute(attr.ERROR_TYPE, attr.error_type(exc))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, description))
