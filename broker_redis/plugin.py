"""The ``broker`` entry point of the Redis transport: ``redis://``, ``rediss://``, ``unix://``,
and a Redis Cluster's ``redis+cluster://`` and ``rediss+cluster://``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker_core.hooks import TransportInfo, hookimpl
from broker_redis.options import OPTION_NAMES, SCHEMES

if TYPE_CHECKING:
    from broker_redis.transport import RedisTransport

__all__ = ["broker_make_transport", "broker_transport_info"]


@hookimpl
def broker_transport_info() -> TransportInfo:
    """Describe the Redis transport."""
    return TransportInfo(
        name="redis",
        schemes=SCHEMES,
        description="Redis or Redis Cluster (redis-py asyncio): shared by any number of "
        "processes; one Lua script per state transition, leases on the server's clock",
    )


@hookimpl
def broker_make_transport(url: str, options: Mapping[str, Any]) -> RedisTransport | None:
    """A RedisTransport for a Redis URL, with the options it knows; None for other schemes."""
    if urlsplit(url).scheme not in SCHEMES:
        return None
    # Imported only for its own URLs: a process on another transport never loads the
    # client library (start-up time).
    from broker_redis.transport import RedisTransport

    return RedisTransport(url, **{k: v for k, v in options.items() if k in OPTION_NAMES})
