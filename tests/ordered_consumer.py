"""A service process for the ordered-group test: the real Broker in an ordered group.

    python tests/ordered_consumer.py URL PREFIX LEASE

Runs group ``projection`` on topic ``ledger``, ordered, until killed. For each delivery
it prints two flushed lines, ``start <key> <seq> <monotonic ns>`` and ``end <key> <seq>
<monotonic ns>``, from which the test checks per-key order across processes (the
monotonic clock is the machine's, shared by every process).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import ClassVar

from broker_core import Broker, Delivery, Event, RetryPolicy


class Entry(Event):
    topic: ClassVar[str] = "ledger"
    key_field: ClassVar[str | None] = "account"
    account: str
    seq: int


async def serve(url: str, prefix: str, lease: float) -> None:
    broker = Broker.from_url(
        f"{url}?key_prefix={prefix}",
        group="projection",
        lease=lease,
        concurrency=8,
        poll_interval=0.1,
        retry=RetryPolicy(max_attempts=20, initial_delay=0, max_delay=0, jitter=0),
    )

    @broker.on(Entry)
    async def handle(event: Entry, delivery: Delivery[Entry]) -> None:
        print("start", delivery.key, event.seq, time.monotonic_ns(), flush=True)
        await asyncio.sleep(0.004)
        print("end", delivery.key, event.seq, time.monotonic_ns(), flush=True)

    async with broker:
        await broker.subscribe("ledger", ordered=True)
        await broker.run()


if __name__ == "__main__":
    url, prefix, lease = sys.argv[1:4]
    asyncio.run(serve(url, prefix, float(lease)))
