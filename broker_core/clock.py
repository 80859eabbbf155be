"""Clocks that transports read lease deadlines and due times from.

A transport takes a clock so that tests can move time instead of sleeping. Production
transports use their store's own clock (the memory transport the process's monotonic
clock, the Redis transport the server's ``TIME``).
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "MonotonicClock"]


class Clock(Protocol):
    """A source of the current time in seconds; only differences between readings matter."""

    def now(self) -> float:
        """The current time in seconds."""
        ...


class MonotonicClock:
    """The process's monotonic clock."""

    def now(self) -> float:
        """The current time in seconds."""
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; used by tests to expire leases without sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The current time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (which must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock cannot move backwards")
        self._now += seconds
