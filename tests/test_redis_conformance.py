"""The shared conformance suite and hypothesis state machine, run against Redis.

Each transport the factory builds gets a key prefix of its own on the session's server,
so every test (and every hypothesis example) starts from an empty store. The state
machine runs at its default size (about 7 s here; 400 examples of 60 steps, about 80 s,
pass too).
"""

from __future__ import annotations

import pytest

from broker_core.clock import ManualClock
from broker_core.testing import TransportConformance, TransportFactory
from broker_redis.testing import unique_prefix
from broker_redis.transport import RedisTransport


class TestRedisConformance(TransportConformance):
    """Every transition of the delivery state machine, on a real redis-server."""

    # Each partition is a unit of its own: max_events limits each one's history.
    max_events_per_partition = True

    @pytest.fixture
    def transport_factory(self, redis_url: str) -> TransportFactory:
        def make(clock: ManualClock) -> RedisTransport:
            return RedisTransport(redis_url, key_prefix=unique_prefix(), clock=clock)

        return make
