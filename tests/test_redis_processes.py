"""Crash safety with real consumer processes sharing one group on a real redis-server,
and on a real 3-master Redis Cluster.

The consumers (tests/redis_consumer.py) use the server's clock and short leases; the
test kills one with SIGKILL mid-handler, or freezes one with SIGSTOP past its lease, and
checks the invariants of docs/semantics.md on what every process reported. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import pytest_asyncio
from checkout import checkout_env

from broker_core.partitions import partition_of
from broker_core.transport import QueueStats
from broker_redis.transport import RedisTransport

CONSUMER = Path(__file__).with_name("redis_consumer.py")
T, G = "orders", "billing"
# On the cluster the SIGKILL test's events go to three topics, one on each master.
CLUSTER_TOPICS = ["t0", "t1", "t2"]
LEASE = 0.8
RUN_SECONDS = 40


@dataclass
class Consumer:
    """One consumer process and the lines it printed so far."""

    process: subprocess.Popen[str]
    log: Path
    _file: IO[str] = field(repr=False)

    def lines(self) -> list[list[str]]:
        # Only whole lines: the consumer may be halfway through writing the last one.
        text = self.log.read_text()
        return [line.split() for line in text[: text.rfind("\n") + 1].splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case the test left it stopped
            self.process.kill()
        self.process.wait(timeout=10)
        self._file.close()


StartConsumer = Callable[[str], Consumer]


@pytest.fixture(params=["node", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The shared server's URL, or the shared cluster's (both flushed afterwards)."""
    fixture = "redis_url" if request.param == "node" else "redis_cluster_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def start_consumer(store_url: str, tmp_path: Path) -> Iterator[StartConsumer]:
    """Start consumer processes of group G on the shared store; all killed afterwards.

    They consume T, and on the cluster CLUSTER_TOPICS too.
    """
    consumers: list[Consumer] = []
    topics = [T, *CLUSTER_TOPICS] if store_url.startswith("redis+cluster") else [T]

    def start(prefix: str) -> Consumer:
        log = tmp_path / f"consumer-{len(consumers)}.log"
        out = log.open("w")
        args = [store_url, prefix, G, ",".join(topics), str(LEASE), str(RUN_SECONDS)]
        process = subprocess.Popen(
            [sys.executable, str(CONSUMER), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=checkout_env(),
        )
        consumer = Consumer(process, log, out)
        consumers.append(consumer)
        return consumer

    yield start
    for consumer in consumers:
        consumer.stop()


@pytest_asyncio.fixture
async def transport(store_url: str, key_prefix: str) -> AsyncIterator[RedisTransport]:
    """The test's own view of the consumers' store (same store, same key prefix)."""
    tr = RedisTransport(store_url, key_prefix=key_prefix)
    await tr.connect()
    yield tr
    await tr.close()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition()`` every 20 ms until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(0.02)


def successful_acks(consumers: list[Consumer]) -> Counter[str]:
    """How often each event id was acked successfully, over every consumer's report."""
    return Counter(
        line[1] for c in consumers for line in c.lines() if line[0] == "ack" and line[3] == "True"
    )


async def test_sigkill_mid_handler_loses_nothing(
    start_consumer: StartConsumer, transport: RedisTransport, key_prefix: str, store_url: str
) -> None:
    topics = CLUSTER_TOPICS if store_url.startswith("redis+cluster") else [T]
    for topic in topics:
        await transport.subscribe(topic, G)
    consumers = [start_consumer(key_prefix) for _ in range(3)]
    await until(lambda: all(["ready"] in c.lines() for c in consumers), 30, "consumers start")
    ids = [f"e{i:03d}" for i in range(150)]
    hang = "e040"
    for n, topic in enumerate(topics):
        mine = ids[n :: len(topics)]
        await transport.publish(topic, [(i, b"hang" if i == hang else b"ok") for i in mine])

    def hanging() -> Consumer | None:
        return next((c for c in consumers if ["start", hang, "1"] in c.lines()), None)

    await until(lambda: hanging() is not None, 30, f"a consumer starts {hang}")
    victim = hanging()
    assert victim is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    # Everything the victim had claimed and not acked must come back, attempt counted.
    victim_lines = victim.lines()
    orphans = {line[1] for line in victim_lines if line[0] == "claim"} - {
        line[1] for line in victim_lines if line[0] == "ack"
    }
    assert hang in orphans

    await until(lambda: set(successful_acks(consumers)) == set(ids), 30, "every event is acked")
    acks = successful_acks(consumers)
    assert all(n == 1 for n in acks.values()), f"acked twice: {acks.most_common(3)}"
    # The hung event, and anything else the victim held, came back with the attempt counted.
    final_attempt = {
        line[1]: int(line[2])
        for c in consumers
        for line in c.lines()
        if line[0] == "ack" and line[3] == "True"
    }
    assert all(final_attempt[i] == 2 for i in orphans), final_attempt
    # The consumers competed for the events.
    assert sum(1 for c in consumers if any(line[0] == "ack" for line in c.lines())) >= 2
    assert not any(line[0] == "ack" and line[3] == "False" for c in consumers for line in c.lines())
    for topic in topics:
        assert await transport.stats(topic, G) == QueueStats(topic, G, 0, 0, 0, 0)
        assert await transport.dead_letters(topic, G) == []


async def test_sigkill_mid_handler_on_a_partitioned_topic_loses_nothing(
    start_consumer: StartConsumer, transport: RedisTransport, key_prefix: str, store_url: str
) -> None:
    # T over 12 partitions (on the cluster, 4 on each master), events keyed so that all
    # of them get some; the consumers learn the count from their first claim.
    await transport.configure_topic(T, partitions=12)
    await transport.subscribe(T, G)
    consumers = [start_consumer(key_prefix) for _ in range(3)]
    await until(lambda: all(["ready"] in c.lines() for c in consumers), 30, "consumers start")
    ids = [f"e{i:03d}" for i in range(120)]
    hang = "e030"
    events = [(i, b"hang" if i == hang else b"ok") for i in ids]
    await transport.publish(T, events, keys=[f"k{n % 24}" for n in range(len(ids))])
    assert {partition_of(i, f"k{n % 24}", 12) for n, i in enumerate(ids)} == set(range(12))

    def hanging() -> Consumer | None:
        return next((c for c in consumers if ["start", hang, "1"] in c.lines()), None)

    await until(lambda: hanging() is not None, 30, f"a consumer starts {hang}")
    victim = hanging()
    assert victim is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)

    await until(lambda: set(successful_acks(consumers)) == set(ids), 30, "every event is acked")
    acks = successful_acks(consumers)
    assert all(n == 1 for n in acks.values()), f"acked twice: {acks.most_common(3)}"
    assert await transport.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
    assert await transport.dead_letters(T, G) == []


async def test_consumer_stopped_past_its_lease_cannot_settle(
    start_consumer: StartConsumer, transport: RedisTransport, key_prefix: str
) -> None:
    await transport.subscribe(T, G)
    await transport.publish(T, [("p1", b"pause")])
    stale = start_consumer(key_prefix)
    await until(lambda: ["start", "p1", "1"] in stale.lines(), 30, "the consumer starts p1")
    os.kill(stale.process.pid, signal.SIGSTOP)
    try:
        # Past its lease (server time), another consumer takes the event over.
        deadline = time.monotonic() + 10
        while not (msgs := await transport.claim(G, [T], max_count=1, lease=30, max_attempts=5)):
            assert time.monotonic() < deadline, "the frozen consumer's lease never expired"
            await asyncio.sleep(0.1)
        [taken] = msgs
        assert (taken.event_id, taken.attempt) == ("p1", 2)
    finally:
        os.kill(stale.process.pid, signal.SIGCONT)
    await until(lambda: any(line[0] == "ack" for line in stale.lines()), 10, "the late ack")
    lines = stale.lines()
    assert ["nack", "p1", "1", "False"] in lines
    assert ["ack", "p1", "1", "False"] in lines
    # Nothing changed: the event is still leased to the new holder, whose ack works.
    assert await transport.stats(T, G) == QueueStats(T, G, 0, 1, 0, 0)
    assert await transport.ack([taken.receipt]) == [True]
    assert await transport.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
