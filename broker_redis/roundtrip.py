"""One round trip of commands on a connection of a :class:`~broker_redis.pool.Pool`.

The script calls (one EVALSHA, or a few, or a script call and its ``WAIT``) are most of
the transport's traffic. redis-py's command path around one of them costs more client
time than the rest of a publish: ``asyncio.wait_for`` around the socket write (a task
per command), an ``asyncio.timeout`` around the read, its retry wrapper, a check for
HIMPORT, metrics. :func:`round_trip` writes the packed commands and reads their
replies under one ``asyncio.timeout`` of the connection's ``socket_timeout``, through
the connection's own stream and reply parser (redis-py's ``_writer`` and ``_parser``:
its public methods are the per-command wrappers above).

Failures are redis-py's, with its messages, and leave the connection as redis-py does:

- no answer within ``socket_timeout``: redis-py's TimeoutError; a broken or closed
  socket: its ConnectionError. Either way, and on any other exception (a cancellation
  mid-call included), the connection is disconnected before it goes back to the pool,
  so no unread reply stays on it; the next checkout reconnects.
- an error reply (NOSCRIPT, a script's error) is that command's reply, a ResponseError,
  as redis-py's ``pipeline.execute(raise_on_error=False)`` gives it.
- re-sending follows the connection's ``retry`` as redis-py's clients do: by default
  the transport's connections retry nothing, so a call that may have run is never sent
  again; a URL's ``retry_on_timeout=true`` re-sends once after a timeout, as it did
  through redis-py.
- a URL's ``health_check_interval`` PINGs an idle connection first, as redis-py does.

redis-py's command metrics (its OpenTelemetry observability, off unless an application
turns it on) are not recorded for these calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker_redis.pool import Pool

__all__ = ["Command", "round_trip"]

Command = Sequence[str | bytes | int | float]
"""One command: its name and its arguments, as redis-py packs them."""


async def round_trip(pool: Pool, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` on one connection of ``pool`` in one write; their replies in order.

    An error reply is returned in its command's place (a ResponseError); a timeout or a
    lost connection raises redis-py's TimeoutError or ConnectionError.
    """
    connection = await pool.get_connection()
    try:
        chunks = [chunk for command in commands for chunk in connection.pack_command(*command)]
        retry = connection.retry
        if retry.get_retries():
            return await retry.call_with_retry(
                lambda: _exchange(connection, chunks, len(commands)),
                lambda error: connection.disconnect(error=error),
            )
        return await _exchange(connection, chunks, len(commands))
    finally:
        pool.put_back(connection)


async def _exchange(connection: AbstractConnection, chunks: list[bytes], count: int) -> list[Any]:
    """Write ``chunks``, read ``count`` replies: disconnected on any failure."""
    if not connection.is_connected:  # only after a failed attempt that is retried
        await connection.connect()  # type: ignore[no-untyped-call]
    if connection.health_check_interval:
        await connection.check_health()  # type: ignore[no-untyped-call]
    writer, parser = connection._writer, cast(Any, connection._parser)
    assert writer is not None
    reading = False
    try:
        async with asyncio.timeout(connection.socket_timeout):
            writer.writelines(chunks)
            await writer.drain()
            reading = True
            replies = [await parser.read_response() for _ in range(count)]
    except TimeoutError:  # (before OSError, whose subclass it is)
        await connection.disconnect(nowait=True)
        if reading:
            raise RedisTimeoutError(f"Timeout reading from {connection._host_error()}") from None
        raise RedisTimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        await connection.disconnect(nowait=True)
        where = f"reading from {connection._host_error()} :" if reading else "writing to socket."
        raise RedisConnectionError(f"Error while {where} {exc.args}") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    if connection.health_check_interval:
        connection.next_health_check = (
            asyncio.get_running_loop().time() + connection.health_check_interval
        )
    return replies
