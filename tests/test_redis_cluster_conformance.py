"""The shared conformance suite and hypothesis state machine, run on a Redis Cluster.

The session's cluster has 3 masters; each transport the factory builds gets a key prefix
of its own, as on one node. The suite's topics hash to slots of different masters (a
test below checks it), so claims over several topics, wake-ups and the registry of
topics all cross masters.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from broker_core.clock import ManualClock
from broker_core.testing import TransportConformance, TransportFactory
from broker_core.testing.conformance.base import T2, T
from broker_core.testing.statemachine import TOPICS
from broker_redis.keys import Keys
from broker_redis.testing import RedisCluster, unique_prefix
from broker_redis.transport import RedisTransport


class TestRedisClusterConformance(TransportConformance):
    """Every transition of the delivery state machine, on a real 3-master cluster."""

    # Each partition is a unit of its own: max_events limits each one's history.
    max_events_per_partition = True

    @pytest.fixture
    def transport_factory(self, redis_cluster_url: str) -> TransportFactory:
        def make(clock: ManualClock) -> RedisTransport:
            return RedisTransport(redis_cluster_url, key_prefix=unique_prefix(), clock=clock)

        return make


def test_the_suites_topics_live_on_several_masters(redis_cluster: RedisCluster) -> None:
    keys = Keys(unique_prefix())
    owners = {}
    with redis_cluster.masters()[0].admin() as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    for topic in {T, T2, *TOPICS}:
        slot = key_slot(keys.topic(topic).msg.encode())
        [port] = [int(m[1]) for start, end, m, *_ in ranges if start <= slot <= end]
        owners[topic] = port
    assert len(set(owners.values())) > 1, owners
