"""The ``broker`` entry point of the PostgreSQL transport: ``postgresql://`` and ``postgres://``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker_core.hooks import TransportInfo, hookimpl
from broker_postgres.options import OPTION_NAMES, SCHEMES

if TYPE_CHECKING:
    from broker_postgres.transport import PostgresTransport

__all__ = ["broker_make_transport", "broker_transport_info"]


@hookimpl
def broker_transport_info() -> TransportInfo:
    """Describe the PostgreSQL transport."""
    return TransportInfo(
        name="postgres",
        schemes=SCHEMES,
        description="PostgreSQL (asyncpg): one function per state transition, FOR UPDATE "
        "SKIP LOCKED claims, LISTEN/NOTIFY wake-ups, transactional publish",
    )


@hookimpl
def broker_make_transport(url: str, options: Mapping[str, Any]) -> PostgresTransport | None:
    """A PostgresTransport for a PostgreSQL URL, with the options it knows; None otherwise."""
    if urlsplit(url).scheme not in SCHEMES:
        return None
    # Imported only for its own URLs: a process on another transport never loads the
    # client library (start-up time).
    from broker_postgres.transport import PostgresTransport

    return PostgresTransport(url, **{k: v for k, v in options.items() if k in OPTION_NAMES})
