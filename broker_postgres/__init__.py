"""A PostgreSQL transport for the embedded event broker: ``postgresql://`` URLs.

Written only against the public plugin API of :mod:`broker_core`, as a third party
would write a transport; docs/plugins.md walks through it.
"""

from broker_postgres.transport import PostgresTransport

__all__ = ["PostgresTransport"]
