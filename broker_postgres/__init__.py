"""A PostgreSQL transport for the embedded event broker: ``postgresql://`` URLs.

Written only against the public plugin API of :mod:`broker_core`, as a third party
would write a transport; docs/plugins.md walks through it.

:class:`PostgresTransport` is imported on first use: the ``broker`` entry point loads
this package in every process, and one on another transport need not load asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker_postgres.transport import PostgresTransport

__all__ = ["PostgresTransport"]


def __getattr__(name: str) -> Any:
    if name == "PostgresTransport":
        from broker_postgres.transport import PostgresTransport

        return PostgresTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
