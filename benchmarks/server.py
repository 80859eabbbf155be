"""The benchmark's own ``redis-server`` and PostgreSQL, started as the tests start them.

:mod:`broker_redis.testing` and :mod:`broker_postgres.testing` provide the launchers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from broker_postgres.testing import PostgresServer
from broker_redis.testing import RedisServer, redis_server_binary

__all__ = [
    "PostgresServer",
    "RedisServer",
    "postgres_server",
    "redis_server",
    "redis_server_binary",
    "redis_version",
]


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A fresh server on a free loopback port, in a temporary directory, stopped after."""
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def redis_version(server: RedisServer) -> str:
    """The server's ``redis_version``."""
    with server.admin() as client:
        return str(client.info("server")["redis_version"])


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh PostgreSQL on a free loopback port, in a temporary folder, removed after."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()
