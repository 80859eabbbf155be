"""What only a Redis Cluster has: cluster URLs, slots, wake-ups across masters, script
caches per master, and the Broker, the demo and the CLI on a real 3-master cluster.

The conformance suite on the cluster is tests/test_redis_cluster_conformance.py; the
crash tests run on it in tests/test_redis_processes.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ClassVar

import pytest
import pytest_asyncio
from redis.crc import key_slot
from typer.testing import CliRunner

from broker_core.broker import Broker
from broker_core.cli import app
from broker_core.demo import GROUPS, run_demo
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_redis.cluster import parse_cluster_url
from broker_redis.keys import Keys
from broker_redis.scripts import SCRIPT_NAMES, load_script
from broker_redis.testing import RedisCluster, unique_prefix
from broker_redis.transport import RedisTransport

G = "billing"


def owners(cluster: RedisCluster, topics: list[str]) -> dict[str, int]:
    """The port of the master that owns each topic's slot."""
    keys = Keys(unique_prefix())
    with cluster.masters()[0].admin() as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    found = {}
    for topic in topics:
        slot = key_slot(keys.topic(topic).msg.encode())
        [found[topic]] = [int(m[1]) for start, end, m, *_ in ranges if start <= slot <= end]
    return found


def one_topic_per_master(cluster: RedisCluster) -> list[str]:
    """A topic name on each master, first found among t0, t1, ..."""
    names = [f"t{i}" for i in range(60)]
    by_master: dict[int, str] = {}
    for topic, port in owners(cluster, names).items():
        by_master.setdefault(port, topic)
    assert len(by_master) == len(cluster.masters())
    return sorted(by_master.values())


@pytest_asyncio.fixture
async def transport(redis_cluster_url: str) -> AsyncIterator[RedisTransport]:
    tr = RedisTransport(redis_cluster_url, key_prefix=unique_prefix())
    await tr.connect()
    yield tr
    await tr.close()


# -- URLs --------------------------------------------------------------------------------


def test_cluster_urls_name_seed_nodes_credentials_and_options() -> None:
    settings = parse_cluster_url(
        "rediss+cluster://app:p%40ss@h1:7000,[::1]:7001,h3/0?ssl_ca_certs=/ca.pem"
    )
    assert settings.nodes == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert settings.kwargs["username"] == "app"
    assert settings.kwargs["password"] == "p@ss"
    assert settings.kwargs["ssl"] is True
    assert settings.kwargs["ssl_ca_certs"] == "/ca.pem"
    assert "p@ss" not in repr(settings)
    # Decoded once: a password may hold a literal percent sign.
    assert parse_cluster_url("redis+cluster://:a%2540b@h1").kwargs["password"] == "a%40b"
    tr = RedisTransport("redis+cluster://:hunter2@h1:7000,h2:7001?key_prefix=app&socket_timeout=2")
    assert "hunter2" not in repr(tr) and "app" in repr(tr)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://h1:7000/1", "only database 0"),
        ("redis+cluster://h1:port", "invalid port"),
        ("redis+cluster://h1:70000", "invalid port"),
        ("redis+cluster://", "no node"),
        ("redis+cluster://:7000", "without a host"),
        ("redis+cluster://h1:7000?no_such_option=1", "invalid option"),
    ],
)
def test_bad_cluster_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisTransport(url)


async def test_credentials_come_from_the_url(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path, password="s3cret")
    cluster.start()
    try:
        for url in (cluster.url, cluster.url.replace(":s3cret@", "default:s3cret@")):
            tr = RedisTransport(url, key_prefix=unique_prefix())
            await tr.connect()
            await tr.subscribe("orders", G)
            assert await tr.topics() == ["orders"]
            await tr.close()
        wrong = RedisTransport(cluster.url.replace("s3cret", "wrong"))
        with pytest.raises(TransportError, match="refused the credentials") as caught:
            await wrong.connect()
        assert "wrong" not in str(caught.value)
    finally:
        cluster.stop()


async def test_unreachable_cluster_says_so() -> None:
    tr = RedisTransport("redis+cluster://127.0.0.1:1,127.0.0.1:2?socket_connect_timeout=0.5")
    with pytest.raises(TransportError, match="cannot reach any node"):
        await tr.connect()


# -- slots -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_every_script_call_stays_in_its_topics_slot(name: str) -> None:
    keys = Keys("app:prod")
    script = load_script(name)
    groups = [keys.group("orders", g) for g in ("billing", "shipping", "audit")]
    call = script.call(
        [],
        topic=keys.topic("orders"),
        group=groups[0],
        groups=groups if script.keys_per_group else (),
    )
    assert call.keys
    assert {key_slot(k.encode()) for k in call.keys} == {key_slot(b"orders")}
    # The registry of topics is in a slot of its own: no script may touch it.
    assert keys.topics not in call.keys


def test_topics_spread_over_every_master(redis_cluster: RedisCluster) -> None:
    topics = one_topic_per_master(redis_cluster)
    assert len(set(owners(redis_cluster, topics).values())) == 3


async def test_one_claim_takes_from_topics_on_every_master(
    redis_cluster: RedisCluster, transport: RedisTransport
) -> None:
    topics = one_topic_per_master(redis_cluster)
    for topic in topics:
        await transport.subscribe(topic, G)
        await transport.publish(topic, [(f"{topic}-{i}", b"x") for i in range(3)])
    assert await transport.topics() == sorted(topics)
    claimed = await transport.claim(G, topics, max_count=9, lease=30, max_attempts=3)
    assert sorted(m.event_id for m in claimed) == sorted(
        f"{t}-{i}" for t in topics for i in range(3)
    )
    assert await transport.ack([m.receipt for m in claimed]) == [True] * 9
    for topic in topics:
        stats = await transport.stats(topic, G)
        assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)


async def test_a_claim_over_more_topics_than_connections_waits_its_turn(
    redis_cluster_url: str,
) -> None:
    # redis-py's cluster pool raises at once when a node has no free connection; the
    # transport queues its calls instead, as a one-node pool does.
    tr = RedisTransport(redis_cluster_url, key_prefix=unique_prefix(), max_connections=2)
    await tr.connect()
    try:
        topics = [f"t{i}" for i in range(24)]
        for topic in topics:
            await tr.subscribe(topic, G)
            await tr.publish(topic, [(f"{topic}-e", b"x")])
        claimed = await tr.claim(G, topics, max_count=24, lease=30, max_attempts=3)
        assert sorted(m.event_id for m in claimed) == sorted(f"{t}-e" for t in topics)
        assert await tr.ack([m.receipt for m in claimed]) == [True] * 24
    finally:
        await tr.close()


# -- wake-ups ----------------------------------------------------------------------------


def pubsub_connections(cluster: RedisCluster) -> int:
    total = 0
    for node in cluster.running():
        with node.admin() as client:
            total += len(client.client_list(_type="pubsub"))
    return total


async def test_an_idle_consumer_of_many_topics_wakes_on_a_publish_to_any_master(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    prefix = unique_prefix()
    topics = [f"t{i}" for i in range(12)]
    assert len(set(owners(redis_cluster, topics).values())) == 3
    # A sweep far longer than the test: only a wake-up can end each wait early.
    waiter = RedisTransport(redis_cluster_url, key_prefix=prefix, sweep_interval=60)
    publisher = RedisTransport(redis_cluster_url, key_prefix=prefix)
    await waiter.connect()
    await publisher.connect()
    try:
        for topic in topics:
            await publisher.subscribe(topic, G)
        assert await waiter.wait(G, topics, 0.05) is False  # subscribes; nothing there
        for topic in one_topic_per_master(redis_cluster):
            waiting = asyncio.create_task(waiter.wait(G, topics, 30))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            started = time.monotonic()
            await publisher.publish(topic, [(f"{topic}-e", b"x")])
            assert await asyncio.wait_for(waiting, 5) is True
            assert time.monotonic() - started < 5
            [m] = await waiter.claim(G, topics, max_count=10, lease=30, max_attempts=3)
            assert m.event_id == f"{topic}-e"
            assert await waiter.ack([m.receipt]) == [True]
        # One subscribed connection for all twelve topics, not one blocked per topic.
        assert pubsub_connections(redis_cluster) == 1
    finally:
        await waiter.close()
        await publisher.close()
    assert pubsub_connections(redis_cluster) == 0


# -- script caches -----------------------------------------------------------------------


async def test_scripts_survive_script_flush_on_one_or_every_master(
    redis_cluster: RedisCluster, transport: RedisTransport
) -> None:
    topics = one_topic_per_master(redis_cluster)
    for topic in topics:
        await transport.subscribe(topic, G)
    for flushed in ([redis_cluster.masters()[0]], redis_cluster.masters()):
        for node in flushed:
            with node.admin() as client:
                client.script_flush()
        for topic in topics:
            assert await transport.publish(topic, [(f"{topic}-{len(flushed)}", b"x")]) == 1
        for node in flushed:
            with node.admin() as client:
                client.script_flush()
        claimed = await transport.claim(G, topics, max_count=10, lease=30, max_attempts=3)
        assert len(claimed) == 3
        assert await transport.ack([m.receipt for m in claimed]) == [True] * 3


# -- the Broker, the demo, the CLI -------------------------------------------------------


class ClusterOrderPlaced(Event):
    """An event of the Broker test on the cluster."""

    topic: ClassVar[str] = "t0"
    n: int


class ClusterPaymentTaken(Event):
    """An event on another master."""

    topic: ClassVar[str] = "t1"
    n: int


class ClusterParcelSent(Event):
    """An event on the third master."""

    topic: ClassVar[str] = "t2"
    n: int


async def test_broker_consumes_topics_on_every_master(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    kinds: list[type[ClusterOrderPlaced | ClusterPaymentTaken | ClusterParcelSent]] = [
        ClusterOrderPlaced,
        ClusterPaymentTaken,
        ClusterParcelSent,
    ]
    assert len(set(owners(redis_cluster, [k.topic for k in kinds]).values())) == 3
    url = f"{redis_cluster_url}?key_prefix={unique_prefix()}"
    consumer = Broker.from_url(url, group=G, poll_interval=0.1, lease=5.0)
    publisher = Broker.from_url(url)
    handled: set[str] = set()

    async def handle(event: Event) -> None:
        handled.add(event.id)

    for kind in kinds:
        consumer.on(kind)(handle)
    async with consumer, publisher:
        for kind in kinds:
            await consumer.subscribe(kind.topic)
        run = asyncio.create_task(consumer.run())
        events = [kind(n=n) for kind in kinds for n in range(20)]
        for event in events:
            await publisher.publish(event)
        async with asyncio.timeout(20):
            while not {e.id for e in events} <= handled:
                await asyncio.sleep(0.02)
        consumer.stop()
        await run
    assert handled == {e.id for e in events}


async def test_demo_on_the_cluster_loses_nothing(redis_cluster_url: str) -> None:
    report = await run_demo(f"{redis_cluster_url}?key_prefix={unique_prefix()}", 200)
    assert report.lost == 0, report
    assert {g.group: g.dead for g in report.groups} == dict.fromkeys(GROUPS, 1)


def test_cli_reads_the_cluster(redis_cluster_url: str) -> None:
    prefix = unique_prefix()
    url = f"{redis_cluster_url}?key_prefix={prefix}"

    async def fill() -> None:
        tr = RedisTransport(url)
        await tr.connect()
        for topic in ("t0", "t1", "t2"):
            await tr.subscribe(topic, G)
            await tr.publish(topic, [(f"{topic}-e", b"x")])
        [m] = await tr.claim(G, ["t2"], max_count=1, lease=30, max_attempts=1)
        await tr.kill(m.receipt, reason="test")
        await tr.close()

    asyncio.run(fill())
    runner = CliRunner()
    stats = runner.invoke(app, ["stats", "--url", url])
    assert stats.exit_code == 0, stats.output
    assert all(topic in stats.output for topic in ("t0", "t1", "t2"))
    dead = runner.invoke(app, ["dead", "--url", url, "--topic", "t2", "--group", G])
    assert dead.exit_code == 0 and "t2-e" in dead.output, dead.output
    replay = runner.invoke(app, ["replay", "--url", url, "--topic", "t2", "--group", G])
    assert replay.exit_code == 0, replay.output

    async def ready() -> int:
        tr = RedisTransport(url)
        await tr.connect()
        stats = await tr.stats("t2", G)
        await tr.close()
        return stats.ready

    assert asyncio.run(ready()) == 1


# -- resharding --------------------------------------------------------------------------


class ReshardedOrder(Event):
    """An event of the resharding test; its topic is chosen at run time."""

    topic: ClassVar[str] = "resharded"
    n: int


async def test_a_run_continues_after_its_topics_slot_is_resharded(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster", masters=3)
    cluster.start()
    try:
        prefix = unique_prefix()
        keys = Keys(prefix)
        # The topic nearest the start of its master's slots: few slots to move.
        with cluster.nodes[0].admin() as client:
            ranges = client.execute_command("CLUSTER", "SLOTS")

        def offset(topic: str) -> int:
            slot = key_slot(keys.topic(topic).msg.encode())
            return min(slot - s for s, e, *_ in ranges if s <= slot <= e)

        topic = min((f"t{i}" for i in range(300)), key=offset)
        source = cluster.master_of(keys.topic(topic).msg)
        target = next(m for m in cluster.masters() if m.port != source.port)
        url = f"{cluster.url}?key_prefix={prefix}"
        consumer = Broker.from_url(url, group=G, poll_interval=0.2, lease=5.0)
        publisher = Broker.from_url(url)
        handled: list[int] = []

        async def handle(event: ReshardedOrder) -> None:
            if event.n < 0:
                raise ValueError("poison")
            handled.append(event.n)

        consumer.on(topic, max_attempts=1)(handle)
        async with consumer, publisher:
            await consumer.subscribe(topic)
            run = asyncio.create_task(consumer.run())
            await publisher.publish(ReshardedOrder(n=-1), topic=topic)  # a dead letter
            for n in range(10):
                await publisher.publish(ReshardedOrder(n=n), topic=topic)
            await until(lambda: len(handled) == 10, "the first events are handled")
            await until_dead(consumer, topic, 1)

            # While the consumer idles: MOVED answers, then the new slot map.
            await asyncio.to_thread(cluster.reshard, source, target, offset(topic) + 1)
            assert cluster.master_of(keys.topic(topic).msg).port == target.port
            for n in range(10, 20):
                await publisher.publish(ReshardedOrder(n=n), topic=topic)
            await until(lambda: len(handled) == 20, "the events after the reshard are handled")
            assert not run.done()
            [letter] = await consumer.transport.dead_letters(topic, G)  # moved along
            consumer.stop()
            await run
        assert sorted(handled) == list(range(20))
        assert letter.attempts >= 1
    finally:
        cluster.stop()


async def until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    """Poll ``condition()`` every 20 ms; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting until {what}")
        await asyncio.sleep(0.02)


async def until_dead(broker: Broker, topic: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(await broker.transport.dead_letters(topic, G)) < count:
        assert time.monotonic() < deadline, "the poison event never died"
        await asyncio.sleep(0.05)


async def test_a_claim_keeps_what_healthy_masters_leased_when_one_master_is_down(
    tmp_path: Path,
) -> None:
    cluster = RedisCluster(tmp_path / "cluster", masters=3)
    cluster.start()
    try:
        prefix = unique_prefix()
        healthy, doomed = one_topic_per_master(cluster)[:2]
        tr = RedisTransport(f"{cluster.url}?key_prefix={prefix}", socket_timeout=1.0)
        await tr.connect()
        try:
            for topic in (healthy, doomed):
                await tr.subscribe(topic, G)
                await tr.publish(topic, [(f"{topic}-{i}", b"x") for i in range(5)])
            cluster.kill(cluster.master_of(Keys(prefix).topic(doomed).msg))
            got = await tr.claim(G, [healthy, doomed], max_count=10, lease=30, max_attempts=3)
            assert sorted(m.event_id for m in got) == [f"{healthy}-{i}" for i in range(5)]
            assert {m.attempt for m in got} == {1}
            with pytest.raises(TransportError):
                await tr.claim(G, [doomed], max_count=10, lease=30, max_attempts=3)
        finally:
            await tr.close()
    finally:
        cluster.stop()
