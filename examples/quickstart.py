"""Publish an order and handle it, on the embedded default transport.

python examples/quickstart.py            # memory://
BROKER_URL=redis://localhost:6379/0 python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

from broker_core import Broker, Delivery, Event


class OrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    total: float


async def main() -> None:
    url = os.environ.get("BROKER_URL", "memory://")
    broker = Broker.from_url(url, group="billing")
    async with broker:
        await broker.subscribe("orders")

        @broker.on(OrderPlaced)
        async def bill(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
            print(f"billing order {event.order_id}: {event.total:.2f} (attempt {delivery.attempt})")

        reached = await broker.publish(OrderPlaced(order_id="A-1", total=9.5))
        print(f"published to {reached} group(s)")
        while await broker.pick():
            pass


if __name__ == "__main__":
    asyncio.run(main())
