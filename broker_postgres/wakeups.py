"""Wake-ups of idle consumers: one LISTEN connection per transport, hints without payload.

Every transition that makes work claimable (publish, immediate nack, release, replay, a
key passed on) runs ``NOTIFY`` on its topic's channel, once per transaction however many
events it wrote: PostgreSQL takes a global lock at the commit of a notifying
transaction, so notifications are kept few. A notification only says "look": the waiter
then polls the tables. A lost one (the LISTEN connection dropped, the server restarted)
costs at most one poll interval, because waiters never sleep longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

import asyncpg

__all__ = ["Wakeups"]

log = logging.getLogger("broker.postgres")


class Wakeups:
    """The listening connection of one transport and the waiters parked on its channels.

    ``connect`` opens a fresh connection for listening. Channels are listened to as
    waiters first need them and kept for the connection's life; when the connection is
    lost every waiter is woken (to poll), and the next :meth:`listen` reconnects.
    """

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._channels: set[str] = set()
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        self._lock = asyncio.Lock()
        self._failing = False

    async def listen(self, channels: Sequence[str]) -> bool:
        """Make sure ``channels`` are listened to; False (waiters poll) if that failed."""
        if (
            self._conn is not None
            and not self._conn.is_closed()
            and self._channels.issuperset(channels)
        ):
            return True
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._channels = set()
                    conn = await self._connect()
                    conn.add_termination_listener(self._lost)
                    self._conn = conn
                for channel in channels:
                    if channel not in self._channels:
                        await self._conn.add_listener(channel, self._notified)
                        self._channels.add(channel)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Once per outage, not once per wait: consumers keep waiting meanwhile.
                if not self._failing:
                    log.warning("cannot LISTEN, waiters poll instead: %s", exc)
                self._failing = True
                await self._drop()
                return False
        self._failing = False
        return True

    @contextlib.contextmanager
    def waiter(self, channels: Sequence[str]) -> Iterator[asyncio.Future[bool]]:
        """A future set to True by a notification on ``channels``, False if the link is lost."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        for channel in channels:
            self._waiters.setdefault(channel, set()).add(future)
        try:
            yield future
        finally:
            for channel in channels:
                waiting = self._waiters.get(channel)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[channel]

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        for future in self._waiters.get(channel, ()):
            if not future.done():
                future.set_result(True)

    def _lost(self, conn: object) -> None:
        # Notifications sent meanwhile are lost: every waiter polls now.
        self._conn = None
        for waiting in self._waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_result(False)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._channels = set()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)

    async def close(self) -> None:
        """Close the listening connection; parked waiters are woken to poll."""
        conn = self._conn
        await self._drop()
        if conn is not None:
            self._lost(conn)
