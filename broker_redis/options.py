"""The options of the Redis transport: the table, defaults, URL parsing and validation.

``redis://[[user]:password@]host[:port][/db][?option=value&...]``, ``rediss://`` for TLS
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` in the query) and
``unix:///path/to/socket[?db=N]``. A Redis Cluster is
``redis+cluster://[[user]:password@]host[:port][,host[:port]...][?option=value&...]``
(``rediss+cluster://`` for TLS): the hosts are seed nodes, from which the client learns
every master and its slots (see docs/cluster.md). The options below may be given in the
query string or as keyword arguments (a keyword argument wins); every other query
parameter goes to redis-py unchanged. docs/redis-keys.md has the same table.

``key_prefix``
    Start of every key (default ``"broker"``): two applications with different prefixes
    share one Redis without seeing each other.
``max_connections``
    Size of each connection pool (default 32): one pool for commands, one for the
    blocking waits of idle consumers. On a cluster: connections per node, and script
    calls on the wire at once.
``socket_timeout`` / ``socket_connect_timeout``
    Seconds to wait for an answer / a connection (defaults 10 and 5).
``max_body_bytes``
    Largest event body accepted (default 1 MiB, the Broker's default
    ``max_event_bytes``); larger ones raise EventTooLarge before anything is written.
``sweep_interval``
    Longest an idle consumer blocks without re-checking the store (default 1 s). The
    re-check requeues leases that expired in consumers that died; it is one script call.
``min_replicas``
    Replicas that must have each publish, subscribe, ack, nack and kill before the call
    returns (default 0: do not wait). After the script, ``WAIT`` on the same connection of
    the master that ran it; fewer replicas within ``replica_timeout`` raise
    ReplicationTimeout (the write is on the master, and may be lost if it fails now).
    Costs a replication round trip per call; see docs/cluster.md.
``replica_timeout``
    Seconds ``WAIT`` waits for ``min_replicas`` replicas (default 1).
``clock`` (keyword only)
    A Clock to read the time from instead of the server's ``TIME`` (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from broker_core.urls import redact
from broker_redis.keys import DEFAULT_PREFIX, validate_prefix

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULTS",
    "DEFAULT_URL",
    "OPTION_NAMES",
    "SCHEMES",
    "RedisOptions",
    "parse_options",
]

DEFAULT_URL = "redis://localhost:6379/0"

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
"""The URL schemes of a Redis Cluster."""

SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
"""The URL schemes this transport serves."""

# Parser of each option's URL text. The rest of the query belongs to redis-py.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "key_prefix": str,
    "max_connections": int,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_body_bytes": int,
    "sweep_interval": float,
    "min_replicas": int,
    "replica_timeout": float,
}

DEFAULTS: Mapping[str, Any] = {
    "key_prefix": DEFAULT_PREFIX,
    "max_connections": 32,
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    # The same as the Broker's default max_event_bytes, so that neither refuses what the
    # other accepts.
    "max_body_bytes": 1024 * 1024,
    "sweep_interval": 1.0,
    "min_replicas": 0,
    "replica_timeout": 1.0,
}
"""The default of every option that may be a URL parameter."""

OPTION_NAMES = frozenset({*_PARSERS, "clock"})
"""The keyword options of RedisTransport (all but ``clock`` may also be URL parameters)."""


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """The transport's options, parsed and checked; ``url`` is what redis-py gets."""

    url: str = field(repr=False)  # it may hold a password
    key_prefix: str
    max_connections: int
    socket_timeout: float
    socket_connect_timeout: float
    max_body_bytes: int
    sweep_interval: float
    min_replicas: int
    replica_timeout: float

    @property
    def cluster(self) -> bool:
        """Whether the URL names a Redis Cluster."""
        return urlsplit(self.url).scheme in CLUSTER_SCHEMES


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without this transport's options, and those options as strings."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _PARSERS:
            ours[name] = value
        else:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def parse_options(url: str, keywords: Mapping[str, Any]) -> RedisOptions:
    """Options from ``url``'s query, overridden by the ``keywords`` that are not None.

    Raises ValueError, naming the option, for a URL that is not a Redis URL, a value that
    does not parse, a bad key prefix or a number that is not positive.
    """
    redis_url, query = _split_url(url)
    if urlsplit(redis_url).scheme not in SCHEMES:
        raise ValueError(f"not a Redis URL: {redact(url)!r}")
    values = dict(DEFAULTS)
    for name, text in query.items():
        try:
            values[name] = _PARSERS[name](text)
        except ValueError:
            raise ValueError(f"invalid {name}={text!r} in Redis URL {redact(url)!r}") from None
    values.update({name: value for name, value in keywords.items() if value is not None})
    for name, value in values.items():
        if name == "min_replicas" and value < 0:
            raise ValueError(f"RedisTransport option {name} must not be negative, got {value}")
        if name not in ("key_prefix", "min_replicas") and value <= 0:
            raise ValueError(f"RedisTransport option {name} must be positive, got {value}")
    return RedisOptions(
        url=redis_url,
        key_prefix=validate_prefix(values["key_prefix"]),
        max_connections=int(values["max_connections"]),
        socket_timeout=float(values["socket_timeout"]),
        socket_connect_timeout=float(values["socket_connect_timeout"]),
        max_body_bytes=int(values["max_body_bytes"]),
        sweep_interval=float(values["sweep_interval"]),
        min_replicas=int(values["min_replicas"]),
        replica_timeout=float(values["replica_timeout"]),
    )
