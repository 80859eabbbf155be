"""A service process for the poison-event test: the real Broker, killed by one event.

    python tests/poison_consumer.py URL PREFIX LEASE

Runs group ``svc`` on topic ``work`` until killed. The handler of the event marked
``poison`` ends the process at once (``os._exit``), as an out-of-memory kill or a
segfault would; every other event takes a few milliseconds and prints one flushed line,
``done <n> <attempt>``, which the test reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import ClassVar

from broker_core import Broker, Delivery, Event, RetryPolicy

POISON_EXIT = 3


class Work(Event):
    topic: ClassVar[str] = "work"
    n: int
    poison: bool = False


async def serve(url: str, prefix: str, lease: float) -> None:
    broker = Broker.from_url(
        f"{url}?key_prefix={prefix}",
        group="svc",
        lease=lease,
        poll_interval=0.1,
        retry=RetryPolicy(max_attempts=5, initial_delay=0, max_delay=0, jitter=0),
    )

    @broker.on(Work)
    async def handle(event: Work, delivery: Delivery[Work]) -> None:
        if event.poison:
            os._exit(POISON_EXIT)
        await asyncio.sleep(0.005)
        print("done", event.n, delivery.attempt, flush=True)

    async with broker:
        await broker.run()


if __name__ == "__main__":
    url, prefix, lease = sys.argv[1:4]
    asyncio.run(serve(url, prefix, float(lease)))
