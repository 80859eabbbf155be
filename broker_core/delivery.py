"""A delivery: one attempt to handle one event, as its handler sees it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Generic, TypeVar

from broker_core.errors import LeaseLost
from broker_core.events import Event
from broker_core.transport import Message, Receipt, checked_results

if TYPE_CHECKING:
    from broker_core.transport import Transport

__all__ = ["Delivery"]

E = TypeVar("E", bound=Event)


class Delivery(Generic[E]):
    """One delivery of ``event`` to this consumer, under a lease.

    The broker renews the lease while the handler runs; a handler that expects to run
    much longer than one lease may also call :meth:`extend`. If the lease is lost
    (renewal failed, or it expired and another consumer took the event),
    :attr:`lease_lost` turns True, :meth:`extend` raises :class:`LeaseLost`, and the
    handler's eventual result changes nothing: the event's fate belongs to the new holder.
    """

    __slots__ = ("_expires_at", "_lease_lost", "_message", "_transport", "event")

    def __init__(self, event: E, message: Message, transport: Transport, expires_at: float) -> None:
        self.event: E = event
        self._message = message
        self._transport = transport
        self._lease_lost = False
        # When the lease surely ends unless renewed, on this process's monotonic clock
        # (the transport's clock may be another machine's): if renewals fail, the
        # handler still learns that its lease is gone.
        self._expires_at = expires_at

    @property
    def topic(self) -> str:
        """The topic the event was published to."""
        return self._message.topic

    @property
    def group(self) -> str:
        """The group this delivery is for."""
        return self._message.group

    @property
    def key(self) -> str | None:
        """The event's ordering key (None if it has none)."""
        return self._message.key

    @property
    def attempt(self) -> int:
        """1 for the first delivery of this event to this group, 2 for the first retry, ..."""
        return self._message.attempt

    @property
    def event_id(self) -> str:
        """The event's id."""
        return self._message.event_id

    @property
    def receipt(self) -> Receipt:
        """The fencing token of this delivery."""
        return self._message.receipt

    @property
    def lease_lost(self) -> bool:
        """Whether this delivery no longer holds the event's lease.

        True once the transport refused its receipt, or once the lease ran out without
        a successful renewal (for example while the store could not be reached).
        """
        if not self._lease_lost and time.monotonic() >= self._expires_at:
            self._lease_lost = True
        return self._lease_lost

    def mark_lease_lost(self) -> None:
        """Record that the transport refused this delivery's receipt."""
        self._lease_lost = True

    def renewed(self, until: float) -> None:
        """Record a successful renewal: the lease lasts at least until ``until`` (monotonic)."""
        self._expires_at = max(self._expires_at, until)

    async def extend(self, seconds: float) -> None:
        """Make the lease last ``seconds`` from now; raises LeaseLost if it is gone."""
        if seconds <= 0:
            raise ValueError("a lease extension must be positive")
        asked_at = time.monotonic()
        receipts = [self.receipt]
        if (
            self.lease_lost
            or not checked_results(
                await self._transport.extend(receipts, seconds), receipts, "extend"
            )[0]
        ):
            self._lease_lost = True
            raise LeaseLost(f"lease on event {self.event_id} ({self.topic}/{self.group}) is lost")
        self.renewed(asked_at + seconds)

    def __repr__(self) -> str:
        return (
            f"Delivery(topic={self.topic!r}, group={self.group!r}, "
            f"event_id={self.event_id!r}, attempt={self.attempt})"
        )
