"""What every conformance test needs: a factory type, a connected transport and its clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from broker_core.clock import ManualClock
from broker_core.transport import Message, Transport

__all__ = ["Harness", "TransportFactory", "body_of", "open_harness"]

TransportFactory = Callable[[ManualClock], Transport]
"""Builds an unconnected transport over an empty, isolated store that reads the given clock."""


def body_of(event_id: str) -> bytes:
    """The body the suite publishes for ``event_id``, so a test can check it came back intact."""
    return f"body:{event_id}".encode()


@dataclass
class Harness:
    """A connected transport, the clock it reads, and shortcuts the tests share."""

    transport: Transport
    clock: ManualClock

    async def publish(self, topic: str, *event_ids: str) -> int:
        """Publish ``event_ids`` (bodies from :func:`body_of`) in one call."""
        return await self.transport.publish(topic, [(i, body_of(i)) for i in event_ids])

    async def claim(
        self,
        group: str,
        topics: str | Sequence[str],
        *,
        max_count: int = 1,
        lease: float = 10.0,
        max_attempts: int = 5,
    ) -> list[Message]:
        """Claim with defaults long enough that nothing expires unless a test moves time."""
        names = [topics] if isinstance(topics, str) else list(topics)
        return await self.transport.claim(
            group, names, max_count=max_count, lease=lease, max_attempts=max_attempts
        )

    async def claim_ids(self, group: str, topic: str, *, max_count: int = 100) -> list[str]:
        """Claim up to ``max_count`` events and return only their ids, in claim order."""
        return [m.event_id for m in await self.claim(group, topic, max_count=max_count)]


@asynccontextmanager
async def open_harness(factory: TransportFactory) -> AsyncIterator[Harness]:
    """Build a transport with a fresh :class:`ManualClock`, connect it, and close it after."""
    clock = ManualClock()
    transport = factory(clock)
    await transport.connect()
    try:
        yield Harness(transport, clock)
    finally:
        await transport.close()
