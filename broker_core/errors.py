"""Exceptions raised by the broker and its transports."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "EventTooLarge",
    "InvalidEvent",
    "InvalidName",
    "LeaseLost",
    "PartitionChangeRefused",
    "SubscriptionMismatch",
    "TransportError",
    "UnknownTransport",
]


class BrokerError(Exception):
    """Base class of every error this package raises."""


class InvalidName(BrokerError, ValueError):
    """A topic or group name that would not be safe as part of a storage key."""


class InvalidEvent(BrokerError, ValueError):
    """An event holds a value the wire format cannot carry; nothing was published.

    The message names the event and the field, e.g. ``data.items[2].name``.
    """


class SubscriptionMismatch(BrokerError, ValueError):
    """A subscription asked for with other options than the group's stored ones.

    A subscription keeps the options it was created with: delivery never changes behind
    the back of the group's other consumers.
    """


class EventTooLarge(BrokerError, ValueError):
    """An encoded event exceeds the configured size limit; nothing was published."""


class UnknownTransport(BrokerError, LookupError):
    """No installed transport plugin serves the URL's scheme."""


class TransportError(BrokerError):
    """The transport's backing store failed or could not be reached."""


class LeaseLost(BrokerError):
    """The delivery's lease expired or was taken over: its ack or extend changes nothing."""


class PartitionChangeRefused(BrokerError, ValueError):
    """A change of a topic's partition count while the topic holds events; nothing changed.

    Events stay in the partition they were published to, so the count of a topic only
    changes while no group holds any of its events and its history retains none.
    """
