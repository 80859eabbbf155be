"""Replicas: ``min_replicas`` on one node with a replica, and a failover on a cluster.

With ``min_replicas=1`` a publish (subscribe, ack, nack, kill) returns only once a
replica has it, or raises ReplicationTimeout; a master killed mid-run then loses no
event whose publish returned, and consumers and publishers ride through the promotion of
its replica. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from broker_core.broker import Broker
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_redis.errors import ReplicationTimeout
from broker_redis.keys import Keys
from broker_redis.testing import RedisCluster, RedisFactory, RedisServer, unique_prefix
from broker_redis.transport import RedisTransport

G = "billing"


def replica_of(redis_factory: RedisFactory, master: RedisServer) -> RedisServer:
    """Start a replica of ``master`` and return once it acknowledges writes."""
    replica = redis_factory(["--replicaof", "127.0.0.1", str(master.port)])
    deadline = time.monotonic() + 10
    with master.admin() as client:
        while True:
            client.set("probe", "1")
            client.delete("probe")
            if client.execute_command("WAIT", 1, 100) == 1:
                return replica
            assert time.monotonic() < deadline, "the replica never synced"


async def test_min_replicas_waits_for_a_replica_of_one_node(redis_factory: RedisFactory) -> None:
    master = redis_factory(["--repl-diskless-sync-delay", "0"])
    replica = replica_of(redis_factory, master)
    url = f"{master.url}?key_prefix={unique_prefix()}&min_replicas=1&replica_timeout=0.3"
    tr = RedisTransport(url)
    await tr.connect()
    try:
        await tr.subscribe("orders", G)
        assert await tr.publish("orders", [("e1", b"x")]) == 1
        [m] = await tr.claim(G, ["orders"], max_count=1, lease=30, max_attempts=3)
        assert await tr.ack([m.receipt]) == [True]
        # What the master said is done, the replica has.
        with replica.admin() as client:
            assert client.smembers(f"{tr._keys.topic('orders').groups}") == {G.encode()}
        replica.kill()
        started = time.monotonic()
        with pytest.raises(ReplicationTimeout, match="0 of 1 replicas") as caught:
            await tr.publish("orders", [("e2", b"x")])
        assert time.monotonic() - started >= 0.3
        assert isinstance(caught.value, TransportError)
        # The write is on the master: nothing lost, and publishing again adds nothing.
        assert (await tr.stats("orders", G)).ready == 1
    finally:
        await tr.close()
    # Without the option, nobody waits for the missing replica.
    plain = RedisTransport(url.replace("min_replicas=1", "min_replicas=0"))
    await plain.connect()
    try:
        assert await plain.publish("orders", [("e3", b"x")]) == 1
    finally:
        await plain.close()


def test_min_replicas_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="min_replicas must not be negative"):
        RedisTransport("redis://127.0.0.1:1/0?min_replicas=-1")
    with pytest.raises(ValueError, match="replica_timeout must be positive"):
        RedisTransport("redis://127.0.0.1:1/0", replica_timeout=0)


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 masters with a replica each, for this test alone (it kills nodes)."""
    cluster = RedisCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout=1000)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class FailoverA(Event):
    """An event of the failover test, on the first master."""

    topic: ClassVar[str] = "t0"
    n: int


class FailoverB(Event):
    """On the second master."""

    topic: ClassVar[str] = "t1"
    n: int


class FailoverC(Event):
    """On the third master."""

    topic: ClassVar[str] = "t2"
    n: int


KINDS: list[type[FailoverA | FailoverB | FailoverC]] = [FailoverA, FailoverB, FailoverC]


async def test_a_master_killed_mid_run_loses_no_event_whose_publish_returned(
    replicated_cluster: RedisCluster,
) -> None:
    cluster = replicated_cluster
    prefix = unique_prefix()
    keys = Keys(prefix)
    masters = [cluster.master_of(keys.topic(k.topic).msg) for k in KINDS]
    assert len({m.port for m in masters}) == 3
    options = "min_replicas=1&replica_timeout=0.5&socket_timeout=1&socket_connect_timeout=0.5"
    url = f"{cluster.url}?key_prefix={prefix}&{options}"
    consumer = Broker.from_url(url, group=G, poll_interval=0.2, lease=2.0)
    publisher = Broker.from_url(url)
    handled: set[str] = set()

    async def handle(event: Event) -> None:
        handled.add(event.id)

    for kind in KINDS:
        consumer.on(kind)(handle)
    returned: list[str] = []  # ids whose publish returned
    failed = 0

    async def publish(count: int) -> None:
        nonlocal failed
        for _ in range(count):
            n = len(returned) + failed
            event = KINDS[n % 3](n=n)
            try:
                await publisher.publish(event)
            except TransportError:
                failed += 1  # perhaps stored, perhaps not: not counted as returned
                await asyncio.sleep(0.05)
            else:
                returned.append(event.id)

    async with consumer, publisher:
        for kind in KINDS:
            await consumer.subscribe(kind.topic)
        run = asyncio.create_task(consumer.run())
        await publish(30)
        for master in masters:  # the durable calls reload their scripts too
            with master.admin() as client:
                client.script_flush()
        await publish(6)
        assert failed == 0
        cluster.kill(masters[0])
        failover = asyncio.create_task(asyncio.to_thread(cluster.wait_ok))
        while not failover.done():  # errors on the first master's slots meanwhile
            await publish(1)
        await failover
        # The promoted replica has no replica of its own: min_replicas refuses to say
        # its writes are safe until the old master is back, as its replica.
        await publish(15)
        masters[0].start()
        await asyncio.to_thread(cluster.wait_ok)
        await publish(30)
        deadline = time.monotonic() + 30
        while not set(returned) <= handled:
            assert not run.done(), run
            if time.monotonic() > deadline:
                stats = [await consumer.transport.stats(k.topic, G) for k in KINDS]
                missing = set(returned) - handled
                pytest.fail(f"{len(missing)} of {len(returned)} not handled; {stats}")
            await asyncio.sleep(0.05)
        consumer.stop()
        await run
    assert masters[0] not in cluster.masters()  # its replica took over
    assert len(returned) >= 60, (len(returned), failed)
    assert set(returned) <= handled


async def test_wake_ups_move_to_another_node_when_theirs_dies(
    replicated_cluster: RedisCluster,
) -> None:
    cluster = replicated_cluster
    prefix = unique_prefix()
    keys = Keys(prefix)
    topics = [k.topic for k in KINDS]
    # A sweep far longer than the test: only wake-ups can end the waits early.
    waiter = RedisTransport(f"{cluster.url}?key_prefix={prefix}&sweep_interval=60")
    publisher = RedisTransport(f"{cluster.url}?key_prefix={prefix}")
    await waiter.connect()
    await publisher.connect()
    try:
        for topic in topics:
            await publisher.subscribe(topic, G)
        assert await waiter.wait(G, topics, 0.05) is False

        def subscribed_on() -> list[RedisServer]:
            found = []
            for node in cluster.running():
                with node.admin() as client:
                    if client.client_list(_type="pubsub"):
                        found.append(node)
            return found

        [node] = subscribed_on()
        cluster.kill(node)
        await asyncio.to_thread(cluster.wait_ok)
        deadline = time.monotonic() + 10
        while len(subscribed_on()) != 1:
            assert time.monotonic() < deadline, "the subscription never moved"
            await asyncio.sleep(0.05)
        # The renewed subscription counts as a wake-up (messages may have been missed),
        # and the first call to the dead master fails, as a consumer's would: it retries.
        for _ in range(5):
            with contextlib.suppress(TransportError):
                if not await waiter.wait(G, topics, 0.2):
                    break
        survivor = next(t for t in topics if cluster.master_of(keys.topic(t).msg) != node)
        waiting = asyncio.create_task(waiter.wait(G, topics, 30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await publisher.publish(survivor, [("after", b"x")])
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        await waiter.close()
        await publisher.close()
