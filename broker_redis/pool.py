"""The one-node connection pool: a free connection costs no lock, timer or metrics.

redis-py's ``BlockingConnectionPool`` queues callers when every connection is busy,
which the transport needs (a burst of publishes or acks must wait for a connection, not
fail), but it pays for the queue on every checkout: an ``asyncio.Condition``, an
``asyncio.timeout``, an async context manager and wait-time metrics, and on every
release the Condition again and an event dispatch (~23 us of a ~200 us publish,
measured). :class:`Pool` hands out an idle connection, or opens one below
``max_connections``, without any of that, and queues a caller (first come, first
served, up to ``timeout`` seconds) only when ``max_connections`` are all in use; a
returned connection goes straight to the longest waiter.

What a checkout checks is redis-py's own ``ensure_connection``: the connection is
connected, and nothing is waiting to be read on it (an unread reply, or the end of a
socket the server closed, as after a restart); otherwise it is reconnected.

redis-py's pool metrics (its OpenTelemetry observability, off unless an application
enables it) are not recorded for this pool. The pool needs maintenance notifications
off (the transport turns them off: with them on, redis-py skips the check above) and
no streaming credential provider (whose re-authentication redis-py runs on release).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["NO_CONNECTION", "Pool"]

NO_CONNECTION = "No connection available."
"""The message of the ConnectionError of a caller that waited ``timeout`` in vain (the
same as redis-py's ``BlockingConnectionPool``)."""


class Pool(ConnectionPool):
    """A connection pool of at most ``max_connections``; a caller waits up to ``timeout``.

    ``timeout`` None waits as long as it takes. The other keyword arguments are redis-py's
    connection options, as for its ``ConnectionPool``.
    """

    def __init__(
        self, max_connections: int = 50, timeout: float | None = 20, **kwargs: Any
    ) -> None:
        config = kwargs.get("maint_notifications_config")
        if config is None or config.enabled is not False:
            raise ValueError("Pool needs maintenance notifications off (MaintNotificationsConfig)")
        if kwargs.get("credential_provider") is not None:
            raise ValueError("Pool does not re-authenticate: no credential_provider")
        super().__init__(max_connections=max_connections, **kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def get_connection(
        self, command_name: object = None, *keys: object, **options: object
    ) -> AbstractConnection:
        """A connected connection with nothing to read, waiting for one at the limit.

        Raises redis-py's ConnectionError when none came free within ``timeout``.
        """
        if self._waiters:
            connection = await self._wait()
        elif self._available_connections:
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
        elif len(self._in_use_connections) < self.max_connections:
            connection = self.make_connection()  # type: ignore[no-untyped-call]
            self._in_use_connections.add(connection)
        else:
            connection = await self._wait()
        try:
            await self._ensure(connection)
        except BaseException:
            self.put_back(connection)
            raise
        return connection

    async def _ensure(self, connection: AbstractConnection) -> None:
        """redis-py's ``ensure_connection`` (maintenance notifications off)."""
        if not connection.is_connected:
            await connection.connect()  # type: ignore[no-untyped-call]
        try:
            if await connection.can_read():
                raise RedisConnectionError("Connection has data")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await connection.disconnect()
            await connection.connect()  # type: ignore[no-untyped-call]
            if await connection.can_read():
                raise RedisConnectionError("Connection not ready") from None

    async def _wait(self) -> AbstractConnection:
        """The next connection put back, within ``timeout``."""
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException as exc:
            handed = waiter.done() and not waiter.cancelled()
            if handed and isinstance(exc, TimeoutError):
                return waiter.result()  # it came just as the time ran out
            if handed:
                # Cancelled after a connection was handed over: it goes to the next one.
                self.put_back(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError(NO_CONNECTION) from exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def put_back(self, connection: AbstractConnection) -> None:
        """Return ``connection`` (checked out of this pool): to a waiter, or to the idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)  # it stays in use, by the waiter now
                return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)

    async def release(self, connection: AbstractConnection) -> None:
        """Return ``connection`` (redis-py's clients call this): see :meth:`put_back`."""
        self.put_back(connection)
