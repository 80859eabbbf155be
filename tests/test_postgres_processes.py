"""Crash safety with real consumer processes sharing one group on a real PostgreSQL.

The consumers (tests/postgres_consumer.py) use the server's clock and short leases; the
test kills one with SIGKILL mid-handler, freezes one with SIGSTOP past its lease, or
restarts the server under them, and checks the invariants of docs/semantics.md on what
every process reported. Every wait is bounded.
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

from broker_core.errors import TransportError
from broker_core.transport import QueueStats
from broker_postgres.testing import PostgresServer, unique_schema
from broker_postgres.transport import PostgresTransport

CONSUMER = Path(__file__).with_name("postgres_consumer.py")
T, G = "orders", "billing"
LEASE = 0.8
RUN_SECONDS = 40


@dataclass
class Consumer:
    """One consumer process and the lines it printed so far."""

    process: subprocess.Popen[str]
    log: Path
    _file: IO[str] = field(repr=False)

    def lines(self) -> list[list[str]]:
        text = self.log.read_text()
        # A line still being written (no newline yet) is read on the next look.
        complete = text if text.endswith("\n") else text.rpartition("\n")[0]
        return [line.split() for line in complete.splitlines()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case the test left it stopped
            self.process.kill()
        self.process.wait(timeout=10)
        self._file.close()


StartConsumer = Callable[..., Consumer]


@pytest.fixture
def schema() -> str:
    """A schema of this test's own on the server."""
    return unique_schema()


@pytest.fixture
def start_consumer(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[StartConsumer]:
    """Start consumer processes of group G (by default on the shared server); all killed
    afterwards."""
    consumers: list[Consumer] = []

    def start(schema: str, server: PostgresServer = postgres_server) -> Consumer:
        log = tmp_path / f"consumer-{len(consumers)}.log"
        out = log.open("w")
        args = [server.url(), schema, G, T, str(LEASE), str(RUN_SECONDS)]
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
async def transport(
    postgres_server: PostgresServer, schema: str
) -> AsyncIterator[PostgresTransport]:
    """The test's own view of the consumers' store (same server, same schema)."""
    tr = PostgresTransport(postgres_server.url(), schema=schema)
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


async def test_sigkill_mid_handler_loses_nothing(
    start_consumer: StartConsumer, transport: PostgresTransport, schema: str
) -> None:
    await transport.subscribe(T, G)
    consumers = [start_consumer(schema) for _ in range(3)]
    await until(lambda: all(["ready"] in c.lines() for c in consumers), 30, "consumers start")
    ids = [f"e{i:03d}" for i in range(150)]
    hang = "e040"
    await transport.publish(T, [(i, b"hang" if i == hang else b"ok") for i in ids])

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

    def successful_acks() -> Counter[str]:
        return Counter(
            line[1]
            for c in consumers
            for line in c.lines()
            if line[0] == "ack" and line[3] == "True"
        )

    await until(lambda: set(successful_acks()) == set(ids), 30, "every event is acked")
    acks = successful_acks()
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
    assert await transport.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
    assert await transport.dead_letters(T, G) == []


async def test_consumer_stopped_past_its_lease_cannot_settle(
    start_consumer: StartConsumer, transport: PostgresTransport, schema: str
) -> None:
    await transport.subscribe(T, G)
    await transport.publish(T, [("p1", b"pause")])
    stale = start_consumer(schema)
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


async def test_consumers_ride_through_a_server_restart(
    start_consumer: StartConsumer,
    postgres_factory: Callable[[], PostgresServer],
    schema: str,
) -> None:
    # A server of this test's own, restarted (fast shutdown, then start) mid-run.
    server = postgres_factory()
    transport = PostgresTransport(server.url(), schema=schema, connect_timeout=1.0)
    await transport.connect()
    try:
        await transport.subscribe(T, G)
        consumers = [start_consumer(schema, server) for _ in range(2)]
        await until(lambda: all(["ready"] in c.lines() for c in consumers), 30, "consumers start")
        before = [f"b{i:03d}" for i in range(60)]
        after = [f"a{i:03d}" for i in range(60)]
        await transport.publish(T, [(i, b"ok") for i in before])

        def settled() -> set[str]:
            return {
                line[1]
                for c in consumers
                for line in c.lines()
                if line[0] == "ack" and line[3] in ("True", "error")
            }

        await until(lambda: len(settled()) >= 10, 30, "the consumers are busy")
        server.restart()
        # The test's own transport reconnects too: publish is idempotent, so retry it.
        deadline = time.monotonic() + 30
        while True:
            try:
                await transport.publish(T, [(i, b"ok") for i in after])
                break
            except TransportError:
                assert time.monotonic() < deadline, "the server never came back"
                await asyncio.sleep(0.1)
        await until(lambda: settled() >= set(before + after), 60, "every event is settled")
        assert all(c.process.poll() is None for c in consumers), "a consumer died"
        # Nothing lost: every event DONE (an ack that failed mid-restart either committed,
        # or its lease expired and the event was handled again), nothing left anywhere.
        for _ in range(50):  # bounded: acks that failed may leave leases to expire
            stats = await transport.stats(T, G)
            if stats == QueueStats(T, G, 0, 0, 0, 0):
                break
            await asyncio.sleep(0.1)
        assert await transport.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
        assert await transport.dead_letters(T, G) == []
        assert any(line[0] == "down" for c in consumers for line in c.lines())
    finally:
        await transport.close()
