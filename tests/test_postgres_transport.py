"""The PostgreSQL transport beyond the conformance suite: what only a database can do.

Transactional publish (commit and rollback), the server's clock, wake-ups across
transports, clear errors (wrong password, unreachable server, a schema owned by someone
else), migration, and table growth returning to bounded after a long-ish run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import asyncpg
import pytest
import pytest_asyncio

from broker_core.broker import Broker
from broker_core.errors import TransportError
from broker_core.events import Event
from broker_postgres.schema import SCHEMA_VERSION
from broker_postgres.testing import PostgresServer, free_port, unique_schema
from broker_postgres.transport import PostgresTransport
from broker_redis.transport import RedisTransport

T, G = "orders", "billing"


class OutboxOrderPlaced(Event):
    """An event published in the caller's transaction."""

    topic: ClassVar[str] = "outbox-orders"
    n: int


class OutboxInvoiceDue(Event):
    """A second topic, for publish_many in one transaction."""

    topic: ClassVar[str] = "outbox-invoices"
    n: int


@pytest_asyncio.fixture
async def transport(postgres_server: PostgresServer) -> AsyncIterator[PostgresTransport]:
    """A connected transport on the server's clock, in a schema of its own."""
    tr = PostgresTransport(postgres_server.url(schema=unique_schema()), max_connections=4)
    await tr.connect()
    try:
        yield tr
    finally:
        await tr.close()


async def _count(conn: asyncpg.Connection, schema: str, table: str) -> int:
    return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}'))


# -- transactional publish ---------------------------------------------------------------


async def test_a_publish_in_a_committed_transaction_is_delivered(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url(schema=unique_schema())
    async with Broker.from_url(url, group=G) as broker:
        await broker.subscribe(OutboxOrderPlaced.topic)
        conn = await asyncpg.connect(postgres_server.url())
        try:
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE orders (n int)")
                await conn.execute("INSERT INTO orders VALUES (1)")
                assert await broker.publish(OutboxOrderPlaced(n=1), connection=conn) == 1
                # Not committed yet: no other connection sees it.
                [stats] = await broker.stats(OutboxOrderPlaced.topic)
                assert stats.ready == 0
        finally:
            await conn.close()
        [stats] = await broker.stats(OutboxOrderPlaced.topic)
        assert stats.ready == 1


async def test_a_publish_in_a_rolled_back_transaction_never_existed(
    postgres_server: PostgresServer,
) -> None:
    schema = unique_schema()
    async with Broker.from_url(postgres_server.url(schema=schema), group=G) as broker:
        await broker.subscribe(OutboxOrderPlaced.topic)
        await broker.subscribe(OutboxInvoiceDue.topic)
        conn = await asyncpg.connect(postgres_server.url())
        try:
            with pytest.raises(RuntimeError, match="order refused"):
                async with conn.transaction():
                    events = [OutboxOrderPlaced(n=1), OutboxInvoiceDue(n=2)]
                    assert await broker.publish_many(events, connection=conn) == 2
                    raise RuntimeError("order refused")
            assert await _count(conn, schema, "events") == 0
            assert await _count(conn, schema, "deliveries") == 0
            # Both topics in one committed transaction: all of it.
            async with conn.transaction():
                events = [OutboxOrderPlaced(n=3), OutboxInvoiceDue(n=4)]
                assert await broker.publish_many(events, connection=conn) == 2
        finally:
            await conn.close()
        counts = [(s.topic, s.ready) for s in await broker.stats()]
        assert sorted(counts) == [(OutboxInvoiceDue.topic, 1), (OutboxOrderPlaced.topic, 1)]


async def test_transports_without_a_database_refuse_a_connection(redis_url: str) -> None:
    broker = Broker.from_url(f"memory://{unique_schema()}", group=G)
    with pytest.raises(TypeError, match="MemoryTransport cannot publish on a caller's conn"):
        await broker.publish(OutboxOrderPlaced(n=1), connection=object())
    redis = RedisTransport(redis_url)
    with pytest.raises(TypeError, match="RedisTransport cannot publish on a caller's conn"):
        await redis.publish(T, [("e1", b"x")], connection=object())


async def test_a_connection_must_be_an_asyncpg_one(transport: PostgresTransport) -> None:
    await transport.subscribe(T, G)
    with pytest.raises(TypeError, match="asyncpg connection"):
        await transport.publish(T, [("e1", b"x")], connection="postgresql://elsewhere")
    assert (await transport.stats(T, G)).ready == 0


# -- the server's clock and wake-ups -----------------------------------------------------


async def test_leases_are_on_the_server_clock(transport: PostgresTransport) -> None:
    await transport.subscribe(T, G)
    await transport.publish(T, [("e1", b"x")])
    before = time.time()
    [m] = await transport.claim(G, [T], max_count=1, lease=30.0, max_attempts=3)
    # The server's clock_timestamp() (same machine here), not a client's monotonic clock.
    assert before + 29 < m.lease_deadline < time.time() + 31


async def test_a_publish_by_another_process_wakes_a_waiter(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url(schema=unique_schema())
    # A long poll interval: only the notification can wake the waiter in time.
    waiter_side = PostgresTransport(url, poll_interval=30.0)
    publisher_side = PostgresTransport(url)
    await waiter_side.connect()
    await publisher_side.connect()
    try:
        await waiter_side.subscribe(T, G)
        waiting = asyncio.create_task(waiter_side.wait(G, [T], 20.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        await publisher_side.publish(T, [("e1", b"x")])
        assert await asyncio.wait_for(waiting, 5.0) is True
        assert time.monotonic() - started < 2.0
    finally:
        await waiter_side.close()
        await publisher_side.close()


# -- clear errors ------------------------------------------------------------------------


async def test_a_wrong_password_is_a_clear_error(postgres_server: PostgresServer) -> None:
    url = postgres_server.url(password="not-the-password")
    tr = PostgresTransport(url)
    with pytest.raises(TransportError, match="refused the password of user 'postgres'") as err:
        await tr.connect()
    assert "not-the-password" not in str(err.value)
    assert "***" in str(err.value)


async def test_an_unreachable_server_is_a_clear_error() -> None:
    tr = PostgresTransport(f"postgresql://u:secret@127.0.0.1:{free_port()}/db", connect_timeout=2.0)
    with pytest.raises(TransportError, match="cannot reach PostgreSQL at") as err:
        await tr.connect()
    assert "secret" not in str(err.value)


async def test_a_schema_owned_by_someone_else_is_a_clear_error(
    postgres_server: PostgresServer,
) -> None:
    theirs = unique_schema()
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f"CREATE SCHEMA {theirs}")
        await admin.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') THEN "
            "CREATE ROLE app LOGIN PASSWORD 'app-secret'; END IF; END $$"
        )
    finally:
        await admin.close()
    url = postgres_server.url(schema=theirs, user="app", password="app-secret")
    owned = f"schema '{theirs}' is owned by 'postgres', and PostgreSQL user 'app' may not"
    with pytest.raises(TransportError, match=owned):
        await PostgresTransport(url).connect()
    # And one the user may not create at all.
    url = postgres_server.url(schema=unique_schema(), user="app", password="app-secret")
    with pytest.raises(TransportError, match="may not create schema"):
        await PostgresTransport(url).connect()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresTransport("postgresql://h/db?schema=Bad-Name")
    with pytest.raises(ValueError, match="poll_interval must be positive"):
        PostgresTransport("postgresql://h/db", poll_interval=0)
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        PostgresTransport("redis://:pw@h/0")


# -- schema ------------------------------------------------------------------------------


async def test_the_schema_records_its_version_and_connect_migrates_once(
    postgres_server: PostgresServer,
) -> None:
    schema = unique_schema()
    url = postgres_server.url(schema=schema)
    transports = [PostgresTransport(url) for _ in range(3)]
    await asyncio.gather(*(t.connect() for t in transports))  # concurrently: one migration
    try:
        admin = await asyncpg.connect(postgres_server.url())
        try:
            rows = await admin.fetch(f"SELECT version FROM {schema}.schema_version")
            assert [r["version"] for r in rows] == [SCHEMA_VERSION]
            await admin.execute(f"UPDATE {schema}.schema_version SET version = 99")
        finally:
            await admin.close()
        with pytest.raises(TransportError, match="version 99, newer than this release"):
            await PostgresTransport(url).connect()
    finally:
        for t in transports:
            await t.close()


# -- bounded table growth ----------------------------------------------------------------


async def test_tables_return_to_bounded_size_after_a_long_run(
    transport: PostgresTransport, postgres_server: PostgresServer
) -> None:
    # Two groups, retries and dead letters: what is DONE is deleted by the settling calls
    # themselves, the body with the last group; no janitor runs.
    await transport.subscribe(T, G)
    await transport.subscribe(T, "audit")
    for round_ in range(20):
        ids = [f"r{round_}-{i}" for i in range(50)]
        await transport.publish(T, [(i, b"x" * 100) for i in ids], dedup_window=0.5)
        for group in (G, "audit"):
            for _ in range(10):  # bounded
                ms = await transport.claim(group, [T], max_count=25, lease=10, max_attempts=2)
                if not ms:
                    break
                failing = [m for m in ms if m.event_id.endswith("7") and m.attempt == 1]
                for m in failing:
                    assert await transport.nack(m.receipt)
                assert all(await transport.ack([m.receipt for m in ms if m not in failing]))
    admin = await asyncpg.connect(postgres_server.url())
    try:
        schema = transport.schema
        assert await _count(admin, schema, "deliveries") == 0
        assert await _count(admin, schema, "events") == 0
        assert await _count(admin, schema, "lanes") == 0
        # Dedup records outlive their events for their window only: once it ended, each
        # publish forgets a bounded number (twice what it adds, and 16), so publishing
        # goes on forgetting the 1000 ids of the run while it records new ones.
        await asyncio.sleep(0.6)
        for n in range(10):
            await transport.publish(T, [(f"new{n}-{i}", b"x") for i in range(50)])
        old = await admin.fetchval(f"SELECT count(*) FROM {schema}.dedup WHERE event_id LIKE 'r%'")
        assert old == 0
    finally:
        await admin.close()


# -- ordered groups under real concurrency -----------------------------------------------


async def test_an_ordered_group_holds_one_event_per_key_under_concurrent_connections(
    postgres_server: PostgresServer,
) -> None:
    # Two publishers and four consumers, each on its own pool: real concurrent
    # transactions. Every key stays in publish order and is never held twice at once.
    url = postgres_server.url(schema=unique_schema())
    transports = [PostgresTransport(url, max_connections=2) for _ in range(6)]
    await asyncio.gather(*(t.connect() for t in transports))
    publishers, consumers = transports[:2], transports[2:]
    try:
        await publishers[0].subscribe(T, G, ordered=True)
        published: dict[str, list[str]] = {}

        async def publish(n: int, tr: PostgresTransport) -> None:
            keys = [f"p{n}-k{k}" for k in range(4)]
            for batch in range(10):
                events = [(f"p{n}-{batch}-{k}", b"x") for k in range(4)]
                for (event_id, _), key in zip(events, keys, strict=True):
                    published.setdefault(key, []).append(event_id)
                await tr.publish(T, events, keys=keys)

        held: set[str] = set()
        handled: dict[str, list[str]] = {}
        total = 2 * 10 * 4

        async def consume(tr: PostgresTransport) -> None:
            for _ in range(400):  # bounded
                if sum(len(v) for v in handled.values()) >= total:
                    return
                ms = await tr.claim(G, [T], max_count=3, lease=30, max_attempts=5)
                if not ms:
                    await tr.wait(G, [T], 0.05)
                    continue
                for m in ms:
                    assert m.key is not None and m.key not in held, f"{m.key} held twice"
                    held.add(m.key)
                await asyncio.sleep(0.002)
                for m in ms:
                    assert m.key is not None
                    held.discard(m.key)
                    handled.setdefault(m.key, []).append(m.event_id)
                assert all(await tr.ack([m.receipt for m in ms]))

        await asyncio.gather(
            *(publish(n, tr) for n, tr in enumerate(publishers)),
            *(consume(tr) for tr in consumers),
        )
        assert handled == published
        assert (await publishers[0].stats(T, G)).lag == 0
    finally:
        for t in transports:
            await t.close()
