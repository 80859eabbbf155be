"""Hook specifications: how plugins extend the broker.

A plugin is an ordinary module (or any object) with ``@hookimpl`` functions. One
registered under the ``broker`` entry-point group applies to every broker of the
process::

    [project.entry-points.broker]
    sqs = "broker_sqs.plugin"

and one given to ``Broker.from_url(url, plugins=[...])`` only to that broker.

Two kinds of hooks. The transport hooks are synchronous and describe and build things;
all I/O stays on the :class:`~broker_core.transport.Transport` they return. The
lifecycle hooks tell a plugin what happens to events (for tracing and metrics), and one
of them, :func:`broker_publish_headers`, lets it add headers to those published. Each
implementation is called on its own: one that raises is logged, naming its plugin and
hook, and the broker goes on. Where a lifecycle hook's docstring says it may be async,
an implementation may be a coroutine function, awaited in the task named there; the
others must be plain functions. A lifecycle hook nobody implements costs nothing: the
broker looks its implementations up once, when it is built (docs/operations.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from broker_core.delivery import Delivery
    from broker_core.events import Event
    from broker_core.transport import Transport

__all__ = [
    "ACKED",
    "PROJECT",
    "Outcome",
    "OutcomeKind",
    "TransportInfo",
    "hookimpl",
    "hookspec",
]

PROJECT = "broker"
"""The pluggy project name, which is also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What a transport plugin tells about itself, for ``broker plugins`` and errors."""

    name: str
    schemes: tuple[str, ...]
    description: str


class OutcomeKind(enum.Enum):
    """What became of a delivery once its handler finished."""

    ACKED = "acked"
    """The handler returned: the event is acknowledged (DONE)."""
    RETRIED = "retried"
    """The handler raised with attempts left: the event is due again after a delay."""
    DEAD = "dead"
    """The handler raised on its last attempt: the event is dead-lettered."""
    LEASE_LOST = "lease_lost"
    """The delivery no longer held the event's lease: its outcome changed nothing, and
    the event belongs to whichever consumer holds it now."""
    RELEASED = "released"
    """The consumer stopped while the handler ran: the handler was cancelled and the
    event given back, its attempt uncounted."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome of one delivery, as the lifecycle hooks are told it."""

    kind: OutcomeKind
    delay: float | None = None
    """For RETRIED: seconds until the event is due again."""
    error: str | None = None
    """When the handler raised: ``"ExceptionType: message"``, as dead letters store it."""


ACKED = Outcome(OutcomeKind.ACKED)
"""The outcome of every handler that returned."""


# ---------------------------------------------------------------------------
# transports
# ---------------------------------------------------------------------------


@hookspec
def broker_transport_info() -> TransportInfo:  # type: ignore[empty-body]
    """Describe the transport this plugin provides: its name and URL schemes.

    Called for listing installed transports and for the error raised when no plugin
    serves a URL's scheme.
    """


@hookspec(firstresult=True)
def broker_make_transport(url: str, options: Mapping[str, Any]) -> Transport | None:
    """Build a transport for ``url``, or return None if its scheme is not this plugin's.

    :param url: the broker URL, e.g. ``redis://localhost:6379/0``.
    :param options: transport options the caller passed beyond those in the URL (for
        example ``clock`` for tests, or ``key_prefix``); a plugin ignores the ones it
        does not know.

    The first plugin that returns a transport wins. The transport is not connected yet.
    """


# ---------------------------------------------------------------------------
# lifecycle: publishing
# ---------------------------------------------------------------------------


@hookspec
def broker_publish_headers(topic: str, event: Event, key: str | None) -> Mapping[str, str] | None:
    """Headers to add to ``event`` as it is published to ``topic``, or None to add none.

    Called for every event of ``publish`` and ``publish_many``, once its topic and ordering
    ``key`` were checked and before it is encoded, so that what it returns travels in the
    envelope (a tracing context, for instance). The results are merged in the order the
    implementations are called, a later one's header replacing an earlier one's, over the
    event's own headers, into a copy of the event: the publish hooks and the consumers see
    the copy, the caller's event is unchanged. Keys and values must be strings: any other
    result is logged and dropped. The event may still be refused after this call (it
    cannot be encoded, or is too large), and the publish hooks are then never told of it.
    Must be a plain function: it runs on every event, before anything is sent.
    """


@hookspec
def broker_publish_before(topic: str, events: Sequence[Event]) -> None:
    """Called before ``events`` are sent to ``topic`` in one transport call.

    Once per call of ``publish``, and once per topic of a ``publish_many``, after every
    event was checked (an event refused by the checks publishes nothing and is not
    reported). May be async: awaited by ``publish`` before the transport call (the
    topics of a ``publish_many`` are published concurrently, each awaiting its own).
    """


@hookspec
def broker_publish_after(
    topic: str, events: Sequence[Event], copies: int | None, error: Exception | None
) -> None:
    """Called once the transport call that :func:`broker_publish_before` announced returned.

    :param copies: the (event, group) copies enqueued, as ``publish`` returns them
        (0 for duplicates and topics nobody subscribed to); None if the call failed.
    :param error: the exception the call raised (``publish`` raises it next), or None.

    May be async: awaited by ``publish`` before it returns.
    """


# ---------------------------------------------------------------------------
# lifecycle: consuming, in the order a delivery goes through them
# ---------------------------------------------------------------------------


@hookspec
def broker_consumer_started(group: str, topics: Sequence[str]) -> None:
    """Called when ``Broker.run`` starts consuming ``topics`` for ``group``.

    After subscribing, before the first claim. May be async: awaited in the task running
    ``run``, which claims once it returns.
    """


@hookspec
def broker_delivery_claimed(topic: str, group: str, event_id: str, attempt: int) -> None:
    """Called when this consumer takes up an event it claimed, before it is decoded.

    A claimed event may wait in the consumer's prefetch buffer first; the hook is called
    when a runner takes it from there, so an event given back from the buffer at stop
    (uncharged) is never reported. ``attempt`` is 1 for the event's first delivery to
    ``group``. Events that never reach a handler (undecodable, of a type this group does
    not handle, or out of attempts) are reported by this hook alone. May be async:
    awaited by the runner that took the event, so it delays that delivery only.
    """


@hookspec
def broker_handler_started(delivery: Delivery[Any]) -> None:
    """Called just before the handler of ``delivery`` (with ``delivery.event``) runs.

    May be async: awaited in the delivery's own task, before the handler.
    """


@hookspec
def broker_handler_finished(
    delivery: Delivery[Any], outcome: Outcome, exception: BaseException | None
) -> None:
    """Called once the handler of ``delivery`` returned or raised, with what comes of it.

    Follows every :func:`broker_handler_started` once, unless ``abort()`` abandoned the
    delivery, as a crash would. Before the outcome is sent to the store. ``exception`` is
    what the handler raised (None if it returned). ``outcome`` is ACKED, RETRIED (with
    its delay), DEAD, LEASE_LOST (the handler raised after the lease was lost: nothing is
    sent) or RELEASED (the handler was cancelled because the consumer stopped: the event
    is given back). Must be a plain function: the outcome is decided, and awaiting here
    would hold its ack back and let a shutdown's cancellation give back an event already
    handled.
    """


@hookspec
def broker_delivery_settled(delivery: Delivery[Any], outcome: Outcome) -> None:
    """Called once the store answered the ack, retry or dead-lettering of ``delivery``.

    ``outcome`` is the one :func:`broker_handler_finished` was told, or LEASE_LOST if
    the store refused the receipt. Not called when nothing was sent (LEASE_LOST,
    RELEASED) or the call failed (the event returns when its lease expires). Must be a
    plain function: acks of many deliveries are answered together, in the task that
    sends them.
    """


@hookspec
def broker_consumer_stopped(group: str, topics: Sequence[str]) -> None:
    """Called when ``Broker.run`` ends, however it ends.

    After the last ack was answered and the events not handled were given back. May be
    async: awaited in the task running ``run``, before ``run`` returns (and before
    ``close`` goes on closing the transport).
    """
