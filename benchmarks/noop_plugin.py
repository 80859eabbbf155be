"""A plugin implementing every per-delivery lifecycle hook as a no-op: what hooks cost.

The drain is run with it beside the drain without any, so that the table shows the price
of calling hooks at all, with nothing done in them.
"""

from __future__ import annotations

from typing import Any

from broker_core import Delivery, hookimpl
from broker_core.hooks import Outcome

__all__ = ["NoopHooks"]


class NoopHooks:
    """Every hook a delivery goes through, doing nothing; the async ones are coroutines."""

    @hookimpl
    async def broker_delivery_claimed(self, topic: str, event_id: str) -> None:
        """Claimed: awaited in the delivery's task."""

    @hookimpl
    async def broker_handler_started(self, delivery: Delivery[Any]) -> None:
        """Started: awaited in the delivery's task."""

    @hookimpl
    def broker_handler_finished(self, delivery: Delivery[Any], outcome: Outcome) -> None:
        """Finished: a plain call."""

    @hookimpl
    def broker_delivery_settled(self, delivery: Delivery[Any], outcome: Outcome) -> None:
        """Settled: a plain call, from the ack loop."""
