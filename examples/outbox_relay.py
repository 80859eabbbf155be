"""The transactional outbox: no event lost, none handled twice, though the relay crashes.

python examples/outbox_relay.py                                  # memory://
python examples/outbox_relay.py redis://localhost:6379/0         # a shared Redis

A service writes its state change and the event announcing it into SQLite in one
transaction, so there is never one without the other. A relay publishes the unsent
events of the outbox and marks them sent. It is killed after publishing an event but
before marking it, so when it restarts it publishes that event again: the broker's
dedup window (``dedup_window``, 300 s by default) sees the same event id and enqueues
nothing. Each group handles every event once; the program exits 1 if not.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from broker_core import Broker, Event

ORDERS = 20
KILLED_AFTER = 7
"""The relay dies after publishing this many events, before marking the last one sent."""


class OrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    total: float


class RelayKilled(Exception):
    """Stands for SIGKILL: the relay's open transaction is never committed."""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit below
    db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total REAL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS outbox ("
        " event_id TEXT PRIMARY KEY, event TEXT NOT NULL, sent INTEGER NOT NULL DEFAULT 0)"
    )
    return db


def place_order(db: sqlite3.Connection, order_id: str, total: float) -> None:
    """The service's state change and its event, in one transaction."""
    event = OrderPlaced(order_id=order_id, total=total)
    with db:
        db.execute("BEGIN")
        db.execute("INSERT INTO orders VALUES (?, ?)", (order_id, total))
        # The event keeps its id in the outbox: a re-sent event is the same event.
        db.execute(
            "INSERT INTO outbox (event_id, event) VALUES (?, ?)",
            (event.id, event.model_dump_json()),
        )


async def relay(db: sqlite3.Connection, broker: Broker, *, die_after: int | None = None) -> int:
    """Publish every unsent outbox event, marking each sent after its publish returned."""
    rows = db.execute("SELECT event_id, event FROM outbox WHERE sent = 0 ORDER BY rowid").fetchall()
    for published, (event_id, data) in enumerate(rows, start=1):
        db.execute("BEGIN")
        await broker.publish(OrderPlaced.model_validate_json(data))
        if published == die_after:
            db.execute("ROLLBACK")
            raise RelayKilled(f"killed after publishing {event_id}, before marking it sent")
        db.execute("UPDATE outbox SET sent = 1 WHERE event_id = ?", (event_id,))
        db.execute("COMMIT")
    return len(rows)


def counter(
    handled: Counter[tuple[str, str]], group: str
) -> Callable[[OrderPlaced], Awaitable[None]]:
    """A handler that counts, per group and order, how often it ran."""

    async def handle(event: OrderPlaced) -> None:
        handled[group, event.order_id] += 1

    return handle


async def main(url: str) -> int:
    handled: Counter[tuple[str, str]] = Counter()
    consumers = [Broker.from_url(url, group=group) for group in ("billing", "shipping")]
    for consumer in consumers:
        consumer.on(OrderPlaced)(counter(handled, consumer.group or ""))

    with tempfile.TemporaryDirectory() as directory:
        db = open_db(Path(directory) / "service.db")
        for consumer in consumers:
            await consumer.connect()
            await consumer.subscribe("orders")
        runs = [asyncio.create_task(consumer.run()) for consumer in consumers]
        for n in range(ORDERS):
            place_order(db, f"order-{n}", 10.0 + n)

        async with Broker.from_url(url) as first_relay:
            try:
                await relay(db, first_relay, die_after=KILLED_AFTER)
            except RelayKilled as exc:
                print(f"relay: {exc}")
        async with Broker.from_url(url) as restarted:
            resent = await relay(db, restarted)
            print(f"relay restarted: published {resent} unsent events, one of them again")

        async with asyncio.timeout(10):
            while sum(handled.values()) < 2 * ORDERS:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time for a duplicate, were there one, to be handled
        for consumer in consumers:
            consumer.stop()
        await asyncio.gather(*runs)
        for consumer in consumers:
            await consumer.close()
        db.close()

    twice = sorted(key for key, count in handled.items() if count > 1)
    missing = [
        (group, f"order-{n}")
        for group in ("billing", "shipping")
        for n in range(ORDERS)
        if (group, f"order-{n}") not in handled
    ]
    for group in ("billing", "shipping"):
        count = sum(1 for (g, _), c in handled.items() if g == group and c == 1)
        print(f"{group}: {count} of {ORDERS} orders handled exactly once")
    if twice or missing:
        print(f"handled twice: {twice}; never handled: {missing}")
        return 1
    print("every event handled once by each group")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://outbox")))
