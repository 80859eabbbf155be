"""A read model built from history, then rebuilt from it: event sourcing with retention.

The ``accounts`` topic keeps a week of history. Billing has been running for a while
when a new service, ``reports``, is deployed: it subscribes from the earliest retained
event, so it builds its balances from the past before it sees live events, each
account's events in order (an ordered group, keyed by account). Then a bug in the
projection is "fixed": reports resets its state and rewinds, and gets the same balances.

python examples/read_model.py                                  # memory://
python examples/read_model.py redis://localhost:6379/0         # a shared store
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict
from datetime import timedelta
from typing import ClassVar

from broker_core import Broker, Event


class AccountEvent(Event):
    topic: ClassVar[str | None] = "accounts"
    key_field: ClassVar[str | None] = "account"  # one account's events stay in order
    account: str


class Deposited(AccountEvent):
    amount: int


class Withdrawn(AccountEvent):
    amount: int


async def drain(broker: Broker) -> None:
    """Handle events until none is ready (a running service would call run())."""
    for _ in range(10_000):
        if not await broker.pick():
            return


async def main(url: str) -> None:
    history = [
        Deposited(account="alice", amount=100),
        Deposited(account="bob", amount=50),
        Withdrawn(account="alice", amount=30),
        Deposited(account="bob", amount=25),
    ]
    live = [Withdrawn(account="bob", amount=5)]

    async with Broker.from_url(url, group="billing") as billing:
        await billing.configure_topic("accounts", max_age=timedelta(days=7))
        await billing.subscribe("accounts")
        await billing.publish_many(history)

        async with Broker.from_url(url, group="reports") as reports:
            balances: dict[str, int] = defaultdict(int)

            @reports.on(Deposited)
            async def deposited(event: Deposited) -> None:
                balances[event.account] += event.amount

            @reports.on(Withdrawn)
            async def withdrawn(event: Withdrawn) -> None:
                balances[event.account] -= event.amount

            # A new group: the retained history first, then what is published later.
            await reports.subscribe("accounts", ordered=True, start="earliest")
            await billing.publish_many(live)
            await drain(reports)
            built = dict(balances)
            print("built from history:", built)

            # Rebuild: reset the projection, rewind, and let it run again.
            balances.clear()
            preview = await reports.rewind("accounts", to="earliest", dry_run=True)
            rewound = await reports.rewind("accounts", to="earliest")
            await drain(reports)
            print(f"rewound {rewound} events (preview said {preview}):", dict(balances))
            [stats] = await reports.topic_stats("accounts")
            print(f"accounts retains {stats.retained} events")
            assert built == dict(balances) == {"alice": 70, "bob": 70}, balances
    print("the rebuilt read model matches")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
