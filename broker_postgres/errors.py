"""PostgreSQL failures as the broker's TransportError, saying what went wrong and where."""

from __future__ import annotations

import asyncpg

from broker_core import TransportError

__all__ = ["BROKEN", "FAILURES", "transport_error"]

FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # What asyncpg raises for a connection whose server went away mid-call (a restart).
    asyncpg.InternalClientError,
)
"""What a call to PostgreSQL may raise that is the store's failure, not the caller's."""


BROKEN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
)
"""The failures after which a pooled connection may be unusable: the pool replaces them."""


def transport_error(op: str, exc: BaseException, safe_url: str, user: str | None) -> TransportError:
    """A TransportError for ``exc`` raised by ``op``, naming the URL without its password."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return TransportError(
            f"PostgreSQL at {safe_url} refused the password of user {user!r} ({op})"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return TransportError(f"PostgreSQL at {safe_url} refused user {user!r} ({op}): {exc}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return TransportError(f"PostgreSQL at {safe_url} has no such database ({op}): {exc}")
    if isinstance(exc, OSError | TimeoutError):
        what = str(exc) or type(exc).__name__
        return TransportError(f"cannot reach PostgreSQL at {safe_url} ({op}): {what}")
    return TransportError(f"PostgreSQL {op} failed at {safe_url}: {type(exc).__name__}: {exc}")
