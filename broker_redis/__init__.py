"""The Redis transport for redis://, rediss://, unix:// and Redis Cluster's redis+cluster://
and rediss+cluster:// URLs; see docs/redis-keys.md and docs/cluster.md.

:class:`RedisTransport` is imported on first use: the ``broker`` entry point loads this
package in every process, and one on another transport need not load redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker_redis.transport import RedisTransport

__all__ = ["RedisTransport"]


def __getattr__(name: str) -> Any:
    if name == "RedisTransport":
        from broker_redis.transport import RedisTransport

        return RedisTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
