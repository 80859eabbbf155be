"""Retention and history on PostgreSQL beyond the conformance suite: what only a database
shows.

The migration of a schema made by version 1 (with its rows) to the current version, a fresh schema
equal to a migrated one, the history trimmed by the calls themselves and the tables back
to empty once retention ends, subscribing from history, rewinding and unsubscribing while
other connections publish, and an unsubscribe racing an ack without a deadlock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from broker_core import TransportError
from broker_postgres.schema import SCHEMA_VERSION, _render, quote
from broker_postgres.testing import PostgresServer, unique_schema
from broker_postgres.transport import PostgresTransport

T, G, G2 = "orders", "billing", "audit"


@pytest_asyncio.fixture
async def admin(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the server, to look at (and prepare) tables directly."""
    conn = await asyncpg.connect(postgres_server.url())
    try:
        yield conn
    finally:
        await conn.close()


async def _count(conn: asyncpg.Connection, schema: str, table: str, where: str = "true") -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {quote(schema)}.{table} WHERE {where}"))


async def _make_version_1(conn: asyncpg.Connection, schema: str) -> None:
    """A schema as release 1 left it: its tables, its version row, functions of its
    signatures, and rows: a READY event of two groups, one of them ordered, and a dead
    letter."""
    s = quote(schema)
    await conn.execute(f"CREATE SCHEMA {s}")
    await conn.execute(_render("schema", schema))  # the tables of version 1, unchanged
    await conn.execute(
        f"CREATE TABLE {s}.schema_version (version integer NOT NULL, functions text NOT NULL)"
    )
    await conn.execute(f"INSERT INTO {s}.schema_version VALUES (1, 'release 1')")
    # Two functions whose signatures version 2 changed: they must not stay as overloads.
    await conn.execute(
        f"CREATE FUNCTION {s}.subscribe(p_topic text, p_grp text, p_ordered boolean) "
        "RETURNS void LANGUAGE sql AS 'SELECT NULL'"
    )
    await conn.execute(
        f"CREATE FUNCTION {s}.dead_letters(p_topic text, p_grp text, p_limit integer) "
        "RETURNS void LANGUAGE sql AS 'SELECT NULL'"
    )
    await conn.execute(
        f"INSERT INTO {s}.subscriptions VALUES ($1, $2, false), ($1, $3, true)", T, G, G2
    )
    await conn.execute(
        f"INSERT INTO {s}.events (topic, seq, event_id, body, key, holders) VALUES "
        f"($1, nextval('{s}.positions'), 'e1', 'body1', 'k', 2), "
        f"($1, nextval('{s}.positions'), 'e2', 'body2', NULL, 1)",
        T,
    )
    await conn.execute(
        f"INSERT INTO {s}.deliveries (topic, grp, event_id, seq, state, pos, key, key_seq) "
        f"SELECT $1, g, 'e1', seq, 'r', seq, CASE WHEN g = $3 THEN 'k' END, "
        f"CASE WHEN g = $3 THEN seq END FROM {s}.events, unnest(ARRAY[$2, $3]) g "
        "WHERE event_id = 'e1'",
        T,
        G,
        G2,
    )
    await conn.execute(f"INSERT INTO {s}.lanes VALUES ($1, $2, 'k', 1)", T, G2)
    await conn.execute(
        f"INSERT INTO {s}.deliveries (topic, grp, event_id, seq, state, pos, attempts, reason, "
        f"error, died_at) SELECT $1, $2, 'e2', seq, 'x', seq, 3, 'max_attempts', 'boom', 5.0 "
        f"FROM {s}.events WHERE event_id = 'e2'",
        T,
        G,
    )


async def _shape(conn: asyncpg.Connection, schema: str) -> list[tuple[str, ...]]:
    """The schema's columns, indexes and function signatures, to compare two schemas."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, coalesce(column_default, '') AS d "
        "FROM information_schema.columns WHERE table_schema = $1",
        schema,
    )
    indexes = await conn.fetch(
        "SELECT indexname, replace(indexdef, $1 || '.', 'S.') AS d FROM pg_indexes "
        "WHERE schemaname = $1",
        schema,
    )
    functions = await conn.fetch(
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS d FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1",
        schema,
    )
    shape = [
        (r["table_name"], r["column_name"], r["data_type"], r["d"].replace(schema, "S"))
        for r in columns
    ]
    shape += [(r["indexname"], r["d"]) for r in indexes]
    shape += [(r["proname"], r["d"]) for r in functions]
    return sorted(shape)


async def test_a_schema_of_version_1_migrates_on_connect_keeping_its_rows(
    postgres_server: PostgresServer, admin: asyncpg.Connection
) -> None:
    old, fresh = unique_schema(), unique_schema()
    await _make_version_1(admin, old)
    tr = PostgresTransport(postgres_server.url(schema=old))
    new = PostgresTransport(postgres_server.url(schema=fresh))
    await tr.connect()
    await new.connect()
    try:
        rows = await admin.fetch(f"SELECT version FROM {quote(old)}.schema_version")
        assert [r["version"] for r in rows] == [SCHEMA_VERSION] == [3]
        # Migrated and created afresh are the same schema: tables, indexes, functions.
        assert await _shape(admin, old) == await _shape(admin, fresh)
        # What version 1 stored is all there and works with this release's functions.
        assert await tr.groups(T) == [G2, G]
        [dead] = await tr.dead_letters(T, G)
        assert (dead.event_id, dead.body, dead.error, dead.attempts) == ("e2", b"body2", "boom", 3)
        assert await tr.publish(T, [("e1", b"again")]) == 0  # still held by both groups
        for group in (G, G2):
            [m] = await tr.claim(group, [T], max_count=5, lease=30, max_attempts=5)
            assert (m.event_id, m.body) == ("e1", b"body1")
            assert await tr.ack([m.receipt]) == [True]
        assert await _count(admin, old, "lanes") == 0
        assert await tr.purge_dead(T, G) == 1
        assert await _count(admin, old, "events") == 0
        # And the topic may be given retention now.
        await tr.configure_topic(T, max_events=10)
        assert await tr.publish(T, [("e3", b"body3")]) == 2
        await tr.subscribe(T, "reports", history=math.inf)
        [m] = await tr.claim("reports", [T], max_count=5, lease=30, max_attempts=5)
        assert (m.event_id, m.body) == ("e3", b"body3")
        # Version 3's partition count: every migrated topic has one partition.
        assert (await tr.topic_stats(T)).partitions == 1
    finally:
        await tr.close()
        await new.close()


async def test_a_failed_migration_changes_nothing(
    postgres_server: PostgresServer, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    await _make_version_1(admin, schema)
    # Something in the way of version 2 (a table it creates): the migration fails whole.
    await admin.execute(f"CREATE TABLE {quote(schema)}.topics (x int)")
    tr = PostgresTransport(postgres_server.url(schema=schema))
    with pytest.raises(TransportError, match="topics"):
        await tr.connect()
    await tr.close()
    rows = await admin.fetch(f"SELECT version, functions FROM {quote(schema)}.schema_version")
    assert [(r["version"], r["functions"]) for r in rows] == [(1, "release 1")]
    columns = await admin.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'events'",
        schema,
    )
    assert "position" not in {r["column_name"] for r in columns}


@pytest_asyncio.fixture
async def transport(postgres_server: PostgresServer) -> AsyncIterator[PostgresTransport]:
    """A connected transport on the server's clock, in a schema of its own."""
    tr = PostgresTransport(postgres_server.url(schema=unique_schema()), max_connections=4)
    await tr.connect()
    try:
        yield tr
    finally:
        await tr.close()


async def _drain(tr: PostgresTransport, group: str) -> list[str]:
    ids: list[str] = []
    for _ in range(200):  # bounded
        ms = await tr.claim(group, [T], max_count=100, lease=30, max_attempts=5)
        if not ms:
            return ids
        assert all(await tr.ack([m.receipt for m in ms]))
        ids += [m.event_id for m in ms]
    raise AssertionError(f"{group} never ran out of events")


async def test_the_history_is_trimmed_by_the_calls_and_ends_with_retention(
    transport: PostgresTransport, admin: asyncpg.Connection
) -> None:
    schema = transport.schema
    await transport.configure_topic(T, max_events=10)
    await transport.subscribe(T, G)
    for n in range(30):
        await transport.publish(T, [(f"e{n}-{i}", b"x" * 100) for i in range(20)])
        assert len(await _drain(transport, G)) == 20
        # Each publish trims what it pushed out: the table holds the newest 10 only.
        assert await _count(admin, schema, "events") == 10
    assert await _count(admin, schema, "deliveries") == 0
    assert (await transport.topic_stats(T)).retained == 10
    # Ids pushed out are free again; retained ones are held.
    assert await transport.publish(T, [("e0-0", b"y"), ("e29-19", b"y")]) == 1
    assert await _drain(transport, G) == ["e0-0"]
    # No retention any more: nothing is read from the history, and a claim frees it.
    await transport.configure_topic(T)
    assert (await transport.topic_stats(T)).retained == 0
    await transport.subscribe(T, G2, history=math.inf)
    assert await _drain(transport, G2) == []
    assert await _count(admin, schema, "events") == 0


async def test_a_group_subscribing_from_history_while_others_publish_gets_each_event_once(
    postgres_server: PostgresServer,
) -> None:
    # Publishers on their own pools publish while a new ordered group subscribes from
    # history: each event reaches it exactly once, either copied from the history or
    # published to it, and every key in publish order (invariant 9).
    url = postgres_server.url(schema=unique_schema())
    transports = [PostgresTransport(url, max_connections=2) for _ in range(3)]
    await asyncio.gather(*(t.connect() for t in transports))
    reader, publishers = transports[0], transports[1:]
    try:
        await reader.configure_topic(T, max_age=3600.0)
        published: dict[str, list[str]] = {}
        midway = asyncio.Event()

        async def publish(n: int, tr: PostgresTransport) -> None:
            for batch in range(30):
                keys = [f"k{k}" for k in range(3)]
                events = [(f"p{n}-{batch}-{k}", b"x") for k in range(3)]
                await tr.publish(T, events, keys=keys)
                for (event_id, _), key in zip(events, keys, strict=True):
                    published.setdefault(f"{n}/{key}", []).append(event_id)
                if batch == 10:
                    midway.set()
                await asyncio.sleep(0)

        async def subscribe_midway() -> None:
            await asyncio.wait_for(midway.wait(), 10)
            await reader.subscribe(T, G, ordered=True, history=math.inf)
            assert sum(map(len, published.values())) < 2 * 30 * 3, "publishers were done"

        await asyncio.gather(
            *(publish(n, tr) for n, tr in enumerate(publishers)), subscribe_midway()
        )
        handled: dict[str, list[str]] = {}
        for _ in range(500):  # bounded
            ms = await reader.claim(G, [T], max_count=50, lease=30, max_attempts=5)
            if not ms:
                break
            for m in ms:
                handled.setdefault(f"{m.event_id[1]}/{m.key}", []).append(m.event_id)
            assert all(await reader.ack([m.receipt for m in ms]))
        assert handled == published
    finally:
        for t in transports:
            await t.close()


async def test_unsubscribing_while_others_publish_leaves_nothing_behind(
    postgres_server: PostgresServer, admin: asyncpg.Connection
) -> None:
    schema = unique_schema()
    url = postgres_server.url(schema=schema)
    transports = [PostgresTransport(url, max_connections=2) for _ in range(3)]
    await asyncio.gather(*(t.connect() for t in transports))
    try:
        await transports[0].subscribe(T, G, ordered=True)
        await transports[0].subscribe(T, G2)

        midway = asyncio.Event()
        done = 0

        async def publish(n: int, tr: PostgresTransport) -> None:
            nonlocal done
            for batch in range(30):
                events = [(f"p{n}-{batch}-{k}", b"x") for k in range(3)]
                await tr.publish(T, events, keys=["k0", "k1", None])
                done += 1
                if batch == 10:
                    midway.set()
                await asyncio.sleep(0)

        async def unsubscribe_midway() -> None:
            await asyncio.wait_for(midway.wait(), 10)
            assert await transports[0].unsubscribe(T, G)
            assert done < 2 * 30, "the publishers were done already"

        await asyncio.gather(
            *(publish(n, tr) for n, tr in enumerate(transports[1:])), unsubscribe_midway()
        )
        assert await _count(admin, schema, "deliveries", f"grp = '{G}'") == 0
        assert await _count(admin, schema, "lanes") == 0
        assert len(await _drain(transports[0], G2)) == 2 * 30 * 3
        # Every body went with its last holder: no copy of the gone group kept one.
        assert await _count(admin, schema, "events") == 0
    finally:
        for t in transports:
            await t.close()


async def test_rewind_while_others_publish_keeps_each_key_in_order(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url(schema=unique_schema())
    transports = [PostgresTransport(url, max_connections=2) for _ in range(2)]
    await asyncio.gather(*(t.connect() for t in transports))
    reader, publisher = transports
    try:
        await reader.configure_topic(T, max_age=3600.0)
        await reader.subscribe(T, G, ordered=True)
        await publisher.publish(T, [(f"old{i}", b"x") for i in range(20)], keys=["k"] * 20)
        assert len(await _drain(reader, G)) == 20

        midway = asyncio.Event()
        done = 0

        async def publish() -> None:
            nonlocal done
            for i in range(30):
                await publisher.publish(T, [(f"new{i}", b"x")], keys=["k"])
                done += 1
                if i == 10:
                    midway.set()
                await asyncio.sleep(0)

        async def rewind() -> int:
            await asyncio.wait_for(midway.wait(), 10)
            count = await reader.rewind(T, G, history=math.inf)
            assert done < 30, "the publisher was done already"
            return count

        _, rewound = await asyncio.gather(publish(), rewind())
        got = []
        for _ in range(200):  # bounded: one event of the key at a time
            ms = await reader.claim(G, [T], max_count=10, lease=30, max_attempts=5)
            if not ms:
                break
            assert len(ms) == 1
            got.append(ms[0].event_id)
            assert await reader.ack([ms[0].receipt]) == [True]
        assert len(got) == 30 + rewound
        live = [i for i in got if i.startswith("new")]
        assert live == sorted(live, key=lambda i: int(i[3:]))
        # The rewound events are the history as it was then, in publish order, each once.
        again = [i for i in got if i.startswith("old")]
        assert again == [f"old{i}" for i in range(20)]
    finally:
        for t in transports:
            await t.close()


async def test_an_id_pushed_out_of_the_history_by_its_own_call_is_new_again(
    transport: PostgresTransport,
) -> None:
    # As the reference has it: each event of a call is judged after the ones before it.
    # e1 (retained, no group holds it) is pushed out of max_events by e2 and e3, so the
    # e1 after them is a new event; so is the repeated a of a call longer than max_events.
    await transport.configure_topic(T, max_events=2)
    await transport.publish(T, [("e0", b"x"), ("e1", b"x")])
    assert await transport.publish(T, [("e1", b"y")]) == 0  # no group: counts 0 copies
    await transport.subscribe(T, G)
    assert await transport.publish(T, [("e2", b"y"), ("e3", b"y"), ("e1", b"y")]) == 3
    assert await transport.publish(T, [("a", b"1"), ("b", b"1"), ("c", b"1"), ("a", b"2")]) == 3
    await transport.unsubscribe(T, G)
    assert await transport.publish(T, [("p", b"1"), ("q", b"1"), ("r", b"1"), ("p", b"2")]) == 0
    await transport.subscribe(T, G2, history=math.inf)
    ms = await transport.claim(G2, [T], max_count=10, lease=30, max_attempts=5)
    assert [(m.event_id, m.body) for m in ms] == [("r", b"1"), ("p", b"2")]


async def test_unsubscribing_while_the_group_acks_never_deadlocks(
    postgres_server: PostgresServer,
) -> None:
    # An ack locks its rows in receipt order, an unsubscribe all the group's rows: both
    # take them in event id order, so that neither waits for the other in a cycle.
    url = postgres_server.url(schema=unique_schema())
    acker, leaver = PostgresTransport(url), PostgresTransport(url)
    await acker.connect()
    await leaver.connect()
    try:
        for round_ in range(10):
            await acker.subscribe(T, G)
            await acker.publish(T, [(f"r{round_}-{i:03}", b"x") for i in range(200)])
            ms = await acker.claim(G, [T], max_count=200, lease=30, max_attempts=5)
            receipts = [m.receipt for m in reversed(ms)]
            acked, left = await asyncio.gather(acker.ack(receipts), leaver.unsubscribe(T, G))
            assert left is True
            assert await acker.groups(T) == []
            assert acked in ([True] * len(ms), [False] * len(ms))  # one wholly first
    finally:
        await acker.close()
        await leaver.close()
