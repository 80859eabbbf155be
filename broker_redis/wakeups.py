"""Wake-ups of idle consumers on a Redis Cluster: one pub/sub connection per transport.

On one node an idle consumer blocks on its group's marker lists (BLMOVE, BLPOP). On a
cluster one blocking pop cannot take keys of several slots, and a blocked connection per
topic would not scale with the topics. So whenever a script sets a marker it also
PUBLISHes on a channel named like the marker key (``includes/wake.lua``); a cluster
forwards a PUBLISH to every node, and each transport subscribes, on one connection to
any node, to the channels of the markers it waits on.

A message is a hint, never state: a subscription misses what was published before it
took effect, or while its node was unreachable. So :meth:`Wakeups.watch` returns once
its channels are subscribed, for the waiter to look at the store then; a subscription
renewed after a lost connection counts as a wake-up of its channels; and the waiter's
periodic sweep (``sweep_interval``) bounds the delay of any wake-up lost in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from broker_core import cancel_and_wait
from broker_redis.errors import REDIS_ERRORS

__all__ = ["Wakeups"]

log = logging.getLogger("broker.redis")

# How long the reader waits before it tries the next node after its node failed.
_RECONNECT_DELAY = 0.1


class Wakeups:
    """The channels this transport waits on, and which of them were woken.

    ``connect(attempt)`` returns a client of the node to subscribe on for the
    ``attempt``-th connection (the caller rotates through the nodes it knows).
    """

    def __init__(self, connect: Callable[[int], Redis], timeout: float) -> None:
        self._connect = connect
        self._timeout = timeout
        self._channels: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirmation = asyncio.Event()
        self._woken: set[str] = set()
        self._waiters: list[tuple[Collection[str], asyncio.Event]] = []
        self._pubsub: PubSub | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def watch(self, channels: Collection[str]) -> None:
        """Subscribe to the ``channels`` not subscribed yet (they stay subscribed), and
        return once Redis confirmed them, or after ``timeout`` seconds if it did not."""
        new = [c for c in channels if c not in self._channels]
        if new:
            self._channels.update(new)
            if self._reader is None:
                # The reader subscribes to every channel when it connects.
                self._reader = asyncio.create_task(self._read(), name="broker-redis-wakeups")
            elif self._connected.is_set() and self._pubsub is not None:
                with contextlib.suppress(*REDIS_ERRORS):  # the reader reconnects
                    await self._pubsub.subscribe(*new)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                while not self._confirmed.issuperset(channels):
                    self._confirmation.clear()
                    await self._confirmation.wait()

    async def wait(self, channels: Collection[str], timeout: float) -> bool:
        """True once one of ``channels`` is woken (or was, since the last wait took it);
        False after ``timeout`` seconds."""
        event = asyncio.Event()
        entry = (channels, event)
        self._waiters.append(entry)
        try:
            if not self._take(channels):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await event.wait()
                return self._take(channels)
            return True
        finally:
            self._waiters.remove(entry)

    def _take(self, channels: Collection[str]) -> bool:
        woken = self._woken.intersection(channels)
        self._woken.difference_update(woken)
        return bool(woken)

    def _wake(self, channel: str) -> None:
        self._woken.add(channel)
        for channels, event in self._waiters:
            if channel in channels:
                event.set()

    async def _read(self) -> None:
        """Receive wake-ups for as long as the transport lives, reconnecting on failure."""
        attempt = 0
        while True:
            client = self._connect(attempt)
            pubsub = client.pubsub()
            try:
                sent = set(self._channels)
                await pubsub.subscribe(*sent)
                self._pubsub = pubsub
                self._connected.set()
                if self._channels - sent:  # watched while the first SUBSCRIBE was sent
                    await pubsub.subscribe(*(self._channels - sent))
                while True:
                    message: Any = await pubsub.get_message(timeout=None)
                    if message is None or message["type"] not in ("message", "subscribe"):
                        continue
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    if message["type"] == "message" or channel in self._confirmed:
                        # A renewed subscription may have missed messages meanwhile.
                        self._wake(channel)
                    else:
                        self._confirmed.add(channel)
                        self._confirmation.set()
            except REDIS_ERRORS as exc:
                log.warning("wake-up subscription lost, subscribing again: %s", exc)
            finally:
                self._connected.clear()
                self._pubsub = None
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.aclose()
            attempt += 1
            await asyncio.sleep(_RECONNECT_DELAY)

    async def close(self) -> None:
        """Stop receiving; waiters still waiting time out."""
        reader, self._reader = self._reader, None
        if reader is not None:
            # Its client sends without wait_for (no socket timeout), so it loses no
            # cancellation of its own; what it does on one, closing its connection, gets
            # the timeout before it is cancelled again.
            await cancel_and_wait(reader, again_after=self._timeout)
