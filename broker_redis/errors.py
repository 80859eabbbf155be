"""Redis failures as :class:`~broker_core.errors.TransportError`, saying what went wrong."""

from __future__ import annotations

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker_core.errors import TransportError
from broker_redis.pool import NO_CONNECTION

__all__ = ["REDIS_ERRORS", "ReplicationTimeout", "replication_timeout", "transport_error"]

REDIS_ERRORS = (RedisError, OSError, RedisClusterException)
"""What a redis-py call raises when Redis fails (the cluster client's own errors are no
RedisError)."""


class ReplicationTimeout(TransportError):
    """Fewer replicas than ``min_replicas`` acknowledged a write in ``replica_timeout``.

    The write took effect on the master; only its survival of a failover right now is
    not assured. Publishing again is safe (publish skips ids the topic holds).
    """


def replication_timeout(op: str, acked: int, wanted: int, timeout: float) -> ReplicationTimeout:
    """The error of ``op`` when ``acked`` of ``wanted`` replicas confirmed it in time."""
    return ReplicationTimeout(
        f"{op} took effect on the master, but only {acked} of {wanted} replicas acknowledged "
        f"it within {timeout} s (options min_replicas, replica_timeout): it may be lost if "
        "that master fails now; check the replicas' links"
    )


def transport_error(
    op: str, exc: BaseException, safe_url: str, password: str | None
) -> TransportError:
    """A TransportError for ``exc`` raised by operation ``op``, never showing ``password``.

    ``safe_url`` is the server's URL with its password already replaced.
    """
    cause = exc.__cause__ if isinstance(exc, RedisClusterException) else None
    if isinstance(exc, AuthenticationError | AuthorizationError) or isinstance(
        cause, AuthenticationError | AuthorizationError
    ):
        what = "Redis refused the credentials (check the user and password in the URL)"
    elif isinstance(exc, MaxConnectionsError) or str(exc) == NO_CONNECTION:
        what = "every connection of the pool stayed busy (raise the max_connections option)"
    elif isinstance(exc, RedisClusterException) and cause is not None:
        what = "cannot reach any node of the Redis Cluster"
    elif isinstance(exc, ClusterDownError | SlotNotCoveredError | RedisClusterException):
        # No node answered, or the master of the keys' slot is down (a failover is
        # promoting its replica): the next call refreshes the slot map.
        what = "the Redis Cluster cannot serve the keys' slot now"
    elif isinstance(exc, RedisTimeoutError):
        what = "Redis did not answer in time"
    elif isinstance(exc, RedisConnectionError | OSError):
        what = "cannot reach Redis"
    elif isinstance(exc, NoScriptError):
        # Only raised once reloading did not help: something keeps flushing the cache.
        what = "Redis keeps losing its scripts"
    else:
        what = "Redis refused the command"
    detail = str(exc) or type(exc).__name__
    if password:
        # redis-py may quote the URL or the AUTH arguments in its message.
        detail = detail.replace(password, "***")
    return TransportError(f"{op} failed: {what} at {safe_url}: {detail}")
