"""Commands packed by hiredis give the bytes redis-py's own packer gives, or are packed
by redis-py's packer where hiredis refuses them (broker_redis.packing)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from broker_redis.packing import pack_with_hiredis


def _pools(url: str) -> tuple[Connection, Connection]:
    """A plain connection and one packing with hiredis, both of ``url``'s kind."""
    plain = BlockingConnectionPool.from_url(url, encoding_errors="surrogateescape")
    fast = BlockingConnectionPool.from_url(url, encoding_errors="surrogateescape")
    pack_with_hiredis(fast)
    pack_with_hiredis(fast)  # twice: no second layer
    return (
        plain.connection_class(**plain.connection_kwargs),
        fast.connection_class(**fast.connection_kwargs),
    )


COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "k1", "k2", "123.25", b"\x00body\xff", -7, 0.1, 2**70, 1e20),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "broker"),
    ("SET", "caf\u00e9", "\u2603" * 3),
    ("SET", "id", b"\xfe\xfd".decode(errors="surrogateescape")),  # hiredis refuses this one
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),  # and this one
]


@pytest.mark.parametrize("url", ["redis://localhost:1/0", "unix:///tmp/none.sock"])
@pytest.mark.parametrize("command", COMMANDS)
def test_the_bytes_are_redis_pys_own(url: str, command: tuple[Any, ...]) -> None:
    plain, fast = _pools(url)
    assert type(fast) is not type(plain) and isinstance(fast, type(plain))
    assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_what_redis_py_refuses_it_still_refuses() -> None:
    plain, fast = _pools("redis://localhost:1/0")
    for connection in (plain, fast):
        with pytest.raises(DataError):
            connection.pack_command("SET", "k", True)


def test_the_connection_kind_is_kept() -> None:
    _, fast = _pools("unix:///tmp/none.sock")
    assert isinstance(fast, UnixDomainSocketConnection) and not isinstance(fast, Connection)
