"""Checks of the arguments that set a topic's retention and read its history.

Transports call them on what reaches them, so that every store refuses the same bad
input with the same message, before it changes anything.
"""

from __future__ import annotations

import math

__all__ = ["validate_history", "validate_retention"]


def validate_retention(max_age: float | None, max_events: int | None) -> None:
    """Raise ValueError unless ``max_age`` (seconds) and ``max_events`` are each None or
    positive (a finite age, a whole count)."""
    if max_age is not None and (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not 0 < max_age < math.inf
    ):
        raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
    if max_events is not None and (
        isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1
    ):
        raise ValueError(f"max_events must be a positive integer, got {max_events!r}")


def validate_history(history: float | None, *, optional: bool = True) -> None:
    """Raise ValueError unless ``history`` is seconds >= 0 (``math.inf``: all), or None
    where it is ``optional`` (a subscription without history; a rewind needs one)."""
    if history is None and optional:
        return
    if isinstance(history, bool) or not isinstance(history, int | float) or not history >= 0:
        raise ValueError(f"history must be seconds >= 0 (math.inf: all), got {history!r}")
