"""The shared conformance suite and hypothesis state machine, run against PostgreSQL.

Each transport the factory builds gets a schema of its own on the session's server, so
every test (and every hypothesis example) starts from an empty store. Like the Redis
transport, it reads the injected ManualClock instead of the server's clock: the
functions take the time as an argument, and NULL means the server's clock_timestamp().
"""

from __future__ import annotations

import pytest

from broker_core.clock import ManualClock
from broker_core.testing import TransportConformance, TransportFactory
from broker_postgres.testing import PostgresServer, unique_schema
from broker_postgres.transport import PostgresTransport


class TestPostgresConformance(TransportConformance):
    """Every transition of the delivery state machine, on a real PostgreSQL server."""

    @pytest.fixture
    def transport_factory(self, postgres_server: PostgresServer) -> TransportFactory:
        def make(clock: ManualClock) -> PostgresTransport:
            return PostgresTransport(
                postgres_server.url(), schema=unique_schema(), clock=clock, max_connections=4
            )

        return make
