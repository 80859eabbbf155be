"""Two services, two instances each, sharing one store: fan-out and competing consumers.

python examples/two_services.py                                  # memory://
python examples/two_services.py redis://localhost:6379/0         # across processes too
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import ClassVar

from broker_core import Broker, Delivery, Event


class OrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    total: float


async def main(url: str) -> None:
    handled: Counter[str] = Counter()
    instances = [
        Broker.from_url(url, group=group, concurrency=4)
        for group in ("billing", "shipping")
        for _ in range(2)
    ]
    for index, broker in enumerate(instances):
        name = f"{broker.group}#{index % 2 + 1}"

        @broker.on(OrderPlaced)
        async def handle(
            event: OrderPlaced, delivery: Delivery[OrderPlaced], name: str = name
        ) -> None:
            handled[name] += 1

        await broker.connect()
        await broker.subscribe("orders")

    async with Broker.from_url(url) as publisher:
        await publisher.publish_many(OrderPlaced(order_id=str(n), total=n) for n in range(100))
    runs = [asyncio.create_task(broker.run()) for broker in instances]
    async with asyncio.timeout(30):
        while sum(handled.values()) < 200:
            await asyncio.sleep(0.05)
    for broker in instances:
        broker.stop()
    await asyncio.gather(*runs)
    for broker in instances:
        await broker.close()
    for name, count in sorted(handled.items()):
        print(f"{name:12} handled {count}")
    print("each group handled all 100 orders once between its two instances")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
