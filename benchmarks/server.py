"""The benchmark's own ``redis-server``, started like the tests start theirs.

The launcher is the tests' :class:`RedisServer` (tests/redis_server.py), imported by
putting ``tests/`` on the path, so there is one launcher in the repository.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from redis_server import (  # type: ignore[import-not-found]  # noqa: E402
    RedisServer,
    redis_server_binary,
)

__all__ = ["RedisServer", "redis_server", "redis_server_binary", "redis_version"]


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
