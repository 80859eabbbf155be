"""Redis-specific behaviour of RedisTransport, each on a real redis-server.

What the conformance suite cannot see: the script cache, restarts and durability, planted
data, credentials and TLS, key prefixes, memory, blocking waits, and big batches.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis as sync_redis

from broker_core.broker import Broker
from broker_core.clock import ManualClock
from broker_core.errors import EventTooLarge, TransportError
from broker_core.events import Event
from broker_core.plugins import installed_transports, make_transport
from broker_core.transport import Message, QueueStats, Transport
from broker_redis import plugin
from broker_redis import transport as redis_transport
from broker_redis.keys import Keys
from broker_redis.options import DEFAULTS, OPTION_NAMES, parse_options
from broker_redis.scripts import load_script
from broker_redis.testing import RedisFactory, RedisServer, make_tls_files, unique_prefix
from broker_redis.transport import RedisTransport

T, G, G2 = "orders", "billing", "shipping"
REDIS_KEYS_DOC = Path(__file__).parent.parent / "docs" / "redis-keys.md"

MakeTransport = Callable[..., Awaitable[RedisTransport]]


@pytest_asyncio.fixture
async def make(redis_url: str) -> AsyncIterator[MakeTransport]:
    """Build connected transports (own prefix unless given) and close them after the test."""
    made: list[RedisTransport] = []

    async def build(url: str = redis_url, **options: Any) -> RedisTransport:
        options.setdefault("key_prefix", unique_prefix())
        transport = RedisTransport(url, **options)
        made.append(transport)
        await transport.connect()
        return transport

    yield build
    for transport in made:
        await transport.close()


def keys_of(server: RedisServer, prefix: str) -> set[bytes]:
    with server.admin() as client:
        return set(client.scan_iter(match=f"{prefix}:*", count=1000))


# -- the script cache ------------------------------------------------------------------


async def test_script_flush_mid_run_changes_nothing(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    tr = await make()
    await tr.subscribe(T, G)
    with redis_server.admin() as admin:
        admin.script_flush()
        assert await tr.publish(T, [(f"e{i}", b"x") for i in range(10)]) == 10
        admin.script_flush()
        msgs = await tr.claim(G, [T], max_count=5, lease=30, max_attempts=3)
        assert [m.event_id for m in msgs] == [f"e{i}" for i in range(5)]
        admin.script_flush()
        assert await tr.extend([m.receipt for m in msgs], 30) == [True] * 5
        admin.script_flush()
        assert await tr.ack([m.receipt for m in msgs[:2]]) == [True, True]
        admin.script_flush()
        assert await tr.nack(msgs[2].receipt, delay=0)
        admin.script_flush()
        assert await tr.kill(msgs[3].receipt, reason="handler")
        admin.script_flush()
        assert (await tr.stats(T, G)).dead == 1
        admin.script_flush()
        assert len(await tr.dead_letters(T, G)) == 1
        admin.script_flush()
        assert await tr.replay_dead(T, G) == 1
        admin.script_flush()
        assert await tr.wait(G, [T], 1.0) is True


# -- the server goes away and comes back -----------------------------------------------


async def test_server_restart_raises_transport_error_then_recovers(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory(password="pa55-word")
    tr = RedisTransport(server.url, socket_timeout=2, socket_connect_timeout=1)
    await tr.connect()
    try:
        await tr.subscribe(T, G)
        assert await tr.publish(T, [("e1", b"x")]) == 1
        server.stop()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "publish": lambda: tr.publish(T, [("e2", b"y")]),
            "claim": lambda: tr.claim(G, [T], max_count=1, lease=5, max_attempts=3),
            "stats": lambda: tr.stats(T, G),
            "wait": lambda: tr.wait(G, [T], 0.5),
        }
        for name, call in calls.items():
            with pytest.raises(TransportError) as failed:
                await asyncio.wait_for(call(), 10)
            message = str(failed.value)
            assert "cannot reach Redis" in message, (name, message)
            assert "pa55-word" not in message and "***" in message
        server.start()  # empty: no persistence, no scripts in the cache
        await tr.subscribe(T, G)
        assert await tr.publish(T, [("e3", b"z")]) == 1
        [m] = await tr.claim(G, [T], max_count=5, lease=5, max_attempts=3)
        assert (m.event_id, m.body) == ("e3", b"z")
        assert await tr.ack([m.receipt]) == [True]
    finally:
        await tr.close()


async def test_concurrent_connects_build_one_pair_of_pools(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    tr = RedisTransport(server.url)
    with server.admin() as admin:
        before = len(admin.client_list())
        try:
            await asyncio.gather(*(tr.connect() for _ in range(5)))
            # One connection: the checks of one connect run one after another on it.
            assert len(admin.client_list()) == before + 1
            assert await tr.groups(T) == []
        finally:
            await tr.close()
        assert len(admin.client_list()) == before, "a pool of a concurrent connect leaked"


async def test_a_failed_connect_can_be_retried(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    server.stop()
    tr = RedisTransport(server.url, socket_connect_timeout=1)
    for _ in range(2):
        with pytest.raises(TransportError, match="cannot reach Redis"):
            await asyncio.gather(*(tr.connect() for _ in range(3)))
    server.start()
    await tr.connect()
    try:
        await tr.subscribe(T, G)
        assert await tr.groups(T) == [G]
    finally:
        await tr.close()


async def test_published_events_survive_a_crash_with_appendfsync_always(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory(["--appendonly", "yes", "--appendfsync", "always"])
    tr = RedisTransport(server.url)
    await tr.connect()
    try:
        await tr.subscribe(T, G)
        for i in range(50):
            assert await tr.publish(T, [(f"e{i:02d}", f"body{i}".encode())]) == 1
        [first] = await tr.claim(G, [T], max_count=1, lease=60, max_attempts=5)
        assert await tr.ack([first.receipt]) == [True]
        server.kill()  # SIGKILL: no shutdown, only what was fsynced survives
        # Let the event loop run, as it would during any real restart, so the client sees
        # its idle connections drop (this test's kill and start would otherwise block it).
        await asyncio.sleep(0.1)
        server.start()
        msgs = await tr.claim(G, [T], max_count=100, lease=60, max_attempts=5)
        assert [(m.event_id, m.body) for m in msgs] == [
            (f"e{i:02d}", f"body{i}".encode()) for i in range(1, 50)
        ]
    finally:
        await tr.close()


# -- planted data ----------------------------------------------------------------------


async def test_foreign_payloads_are_handed_out_as_bytes(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix)
    await tr.subscribe(T, G)
    await tr.publish(T, [("good", b"{}")])
    keys = Keys(prefix)
    t, g = keys.topic(T), keys.group(T, G)
    with redis_server.admin() as admin:
        # A body nobody encoded, an id that is not UTF-8, and an id without any body.
        admin.hset(t.msg, "junk", b"\xff\x00not json")
        admin.hset(t.refs, "junk", 1)
        admin.hset(t.msg, b"\xfe\xfd", b"raw")
        admin.rpush(g.ready, "junk", b"\xfe\xfd", "ghost")
    msgs = await tr.claim(G, [T], max_count=10, lease=30, max_attempts=3)
    assert [(m.event_id, m.body) for m in msgs] == [
        ("good", b"{}"),
        ("junk", b"\xff\x00not json"),
        (b"\xfe\xfd".decode(errors="surrogateescape"), b"raw"),
        ("ghost", b""),
    ]
    # The core dead-letters what it cannot decode; every receipt still works.
    for m in msgs[1:]:
        assert await tr.kill(m.receipt, reason="undecodable", error="DecodeError: not json")
    assert await tr.ack([msgs[0].receipt]) == [True]
    dead = await tr.dead_letters(T, G)
    assert sorted((d.event_id, d.body, d.reason) for d in dead) == sorted(
        (m.event_id, m.body, "undecodable") for m in msgs[1:]
    )
    assert await tr.purge_dead(T, G) == 3
    # What stays: the subscription and its counters (one per topic, one per group).
    assert keys_of(redis_server, prefix) == {
        keys.topics.encode(),
        t.groups.encode(),
        t.published.encode(),
        keys.group(T, G).acked.encode(),
    }


async def test_broker_dead_letters_a_planted_payload(
    redis_url: str, redis_server: RedisServer, key_prefix: str
) -> None:
    handled: list[str] = []
    broker = Broker.from_url(f"{redis_url}?key_prefix={key_prefix}", group=G)

    @broker.on(T)
    async def handle(event: Event) -> None:
        handled.append(event.id)

    async with broker:
        await broker.subscribe(T)
        keys = Keys(key_prefix)
        with redis_server.admin() as admin:
            admin.hset(keys.topic(T).msg, "junk", b"\xff\x00not json")
            admin.hset(keys.topic(T).refs, "junk", 1)
            admin.rpush(keys.group(T, G).ready, "junk")
        assert await broker.pick() is True
        [dead] = await broker.dead_letters(T)
        assert (dead.event_id, dead.reason, dead.body) == (
            "junk",
            "undecodable",
            b"\xff\x00not json",
        )
        assert dead.error
        assert handled == []
        assert await broker.purge_dead(T) == 1
    assert keys_of(redis_server, key_prefix) == {
        keys.topics.encode(),
        keys.topic(T).groups.encode(),
    }  # the planted event was never published nor acked: no counter moved


@pytest.mark.parametrize("bad", ["\udcff", "\ud800"], ids=["fsdecoded-byte", "lone-surrogate"])
async def test_errors_that_are_not_utf8_are_stored_readably(make: MakeTransport, bad: str) -> None:
    # '\udcff' is what os.fsdecode makes of a byte that is not UTF-8; '\ud800' cannot be
    # encoded at all. Both are stored spelled out as their escape.
    tr = await make()
    await tr.subscribe(T, G)
    await tr.publish(T, [("e1", b"x"), ("e2", b"y")])
    first, second = await tr.claim(G, [T], max_count=2, lease=30, max_attempts=5)
    assert await tr.nack(first.receipt, error=f"nacked {bad}")
    [again] = await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5)
    assert await tr.kill(again.receipt, reason="handler")  # keeps the nack's error
    assert await tr.kill(second.receipt, reason=f"why {bad}", error=f"boom {bad}")
    escaped = bad.encode("unicode_escape").decode()
    letters = await tr.dead_letters(T, G)
    assert [(d.event_id, d.reason, d.error) for d in letters] == [
        ("e1", "handler", f"nacked {escaped}"),
        ("e2", f"why {escaped}", f"boom {escaped}"),
    ]
    for letter in letters:
        assert letter.error is not None
        letter.error.encode()
        letter.reason.encode()


async def test_a_dead_letter_record_with_bad_bytes_spoils_no_listing(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix)
    await tr.subscribe(T, G)
    await tr.publish(T, [(f"e{i}", b"x") for i in range(4)])
    for message in await tr.claim(G, [T], max_count=4, lease=30, max_attempts=5):
        assert await tr.kill(message.receipt, reason="handler", error="boom")
    deadinfo = Keys(prefix).group(T, G).deadinfo
    with redis_server.admin() as admin:
        # Written by hand or by an older version: a byte that is not UTF-8, and no JSON.
        admin.hset(deadinfo, "e1", b'{"reason":"handler","error":"bad \xff","attempts":2}')
        admin.hset(deadinfo, "e2", b"\xfe not json")
    letters = await tr.dead_letters(T, G)
    assert [(d.event_id, d.reason, d.error) for d in letters] == [
        ("e0", "handler", "boom"),
        ("e1", "handler", "bad \\udcff"),
        ("e2", "unknown", None),
        ("e3", "handler", "boom"),
    ]
    assert letters[1].attempts == 2


# -- credentials, TLS, sockets -----------------------------------------------------------


async def test_wrong_password_is_a_clear_error(redis_factory: RedisFactory) -> None:
    server = redis_factory(password="right-one")
    bad = RedisTransport(f"redis://:wrong-one@127.0.0.1:{server.port}/0")
    with pytest.raises(TransportError) as failed:
        await bad.connect()
    message = str(failed.value)
    assert "refused the credentials" in message
    assert "wrong-one" not in message and "right-one" not in message
    missing = RedisTransport(f"redis://127.0.0.1:{server.port}/0")
    with pytest.raises(TransportError, match="credentials"):
        await missing.connect()
    good = RedisTransport(server.url)
    await good.connect()
    await good.subscribe(T, G)
    assert await good.publish(T, [("e1", b"x")]) == 1
    await good.close()


async def test_acl_user(redis_factory: RedisFactory) -> None:
    server = redis_factory(["--user", "app", "on", ">app-secret", "~broker:*", "&*", "+@all"])
    tr = RedisTransport(f"redis://app:app-secret@127.0.0.1:{server.port}/0")
    await tr.connect()
    await tr.subscribe(T, G)
    assert await tr.publish(T, [("e1", b"x")]) == 1
    assert [m.event_id for m in await tr.claim(G, [T], max_count=1, lease=5, max_attempts=1)]
    await tr.close()
    # The ACL allows only keys under broker:*: another prefix is refused, clearly.
    other = RedisTransport(f"redis://app:app-secret@127.0.0.1:{server.port}/0?key_prefix=x")
    await other.connect()
    with pytest.raises(TransportError, match="subscribe failed") as failed:
        await other.subscribe(T, G)
    assert "app-secret" not in str(failed.value)
    await other.close()


async def test_tls(redis_factory: RedisFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    if files is None:
        pytest.skip("cannot make a certificate: the openssl CLI is missing or failed")
    server = redis_factory(tls=files)
    tr = RedisTransport(server.url)  # rediss://...?ssl_ca_certs=<the throwaway cert>
    await tr.connect()
    await tr.subscribe(T, G)
    assert await tr.publish(T, [("e1", b"over tls")]) == 1
    [m] = await tr.claim(G, [T], max_count=1, lease=5, max_attempts=1)
    assert m.body == b"over tls"
    await tr.close()
    untrusted = RedisTransport(f"rediss://127.0.0.1:{server.port}/0", socket_connect_timeout=2)
    with pytest.raises(TransportError, match="certificate verify failed"):
        await untrusted.connect()
    plain = RedisTransport(f"redis://127.0.0.1:{server.port}/0", socket_timeout=2)
    with pytest.raises(TransportError):
        await plain.connect()


async def test_unix_socket(redis_factory: RedisFactory, tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    redis_factory(["--unixsocket", str(sock), "--unixsocketperm", "700"])
    tr = RedisTransport(f"unix://{sock}?db=2&key_prefix=app")
    await tr.connect()
    await tr.subscribe(T, G)
    assert await tr.publish(T, [("e1", b"x")]) == 1
    await tr.close()
    with sync_redis.Redis(unix_socket_path=str(sock), db=2) as client:
        assert client.smembers("app:topics") == {T.encode()}


# -- prefixes and memory ---------------------------------------------------------------


async def test_two_prefixes_on_one_server_are_isolated(make: MakeTransport) -> None:
    a = await make(key_prefix="app-a")
    b = await make(key_prefix="app-b")
    await a.subscribe(T, G)
    assert await b.topics() == []
    assert await b.publish(T, [("e1", b"from b")]) == 0
    await b.subscribe(T, G)
    assert await a.publish(T, [("e1", b"from a")]) == 1
    assert await b.publish(T, [("e2", b"from b")]) == 1
    [ma] = await a.claim(G, [T], max_count=10, lease=5, max_attempts=1)
    [mb] = await b.claim(G, [T], max_count=10, lease=5, max_attempts=1)
    assert (ma.event_id, ma.body, mb.event_id, mb.body) == ("e1", b"from a", "e2", b"from b")
    assert await b.ack([ma.receipt]) == [False]
    assert await a.kill(ma.receipt, reason="handler")
    assert await b.dead_letters(T, G) == []
    assert (await b.stats(T, G)).leased == 1


async def test_unsubscribe_leaves_no_key_of_the_group(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix)
    await tr.subscribe(T, G2)
    before = keys_of(redis_server, prefix)
    await tr.subscribe(T, G, ordered=True)
    events = [(f"e{i}", b"x") for i in range(6)]
    await tr.publish(T, events, keys=["k", "k", "j", None, None, None])
    claimed = await tr.claim(G, [T], max_count=4, lease=30, max_attempts=3)
    assert await tr.nack(claimed[1].receipt, delay=60)
    assert await tr.kill(claimed[2].receipt, reason="handler", error="E: x")
    assert any(b":g:billing:" in key for key in keys_of(redis_server, prefix))
    assert await tr.unsubscribe(T, G)
    assert not any(b":g:billing:" in key for key in keys_of(redis_server, prefix))
    with redis_server.admin() as client:
        assert client.smembers(f"{prefix}:{{{T}}}:groups") == {G2.encode()}
        refs = client.hgetall(f"{prefix}:{{{T}}}:refs")
    assert refs == {f"e{i}".encode(): b"1" for i in range(6)}
    shipped = await tr.claim(G2, [T], max_count=10, lease=30, max_attempts=3)
    assert await tr.ack([m.receipt for m in shipped]) == [True] * 6
    # The counters (ordered keys' positions, publishes, the other group's acks) and the
    # registry entry are all that stay.
    assert keys_of(redis_server, prefix) - before == {
        f"{prefix}:{{{T}}}:{name}".encode() for name in ("seq", "published", "g:shipping:acked")
    }


async def test_unsubscribe_ends_a_history_copy_in_progress(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix)
    await tr.configure_topic(T, max_events=100)
    await tr.subscribe(T, G2)
    await tr.publish(T, [(f"e{i}", b"x") for i in range(5)])
    # Begin a history copy for G, as a subscribe does, without running it to its end
    # (a process that crashed mid-copy).
    begin = load_script("subscribe").call([G, "", "inf", "", 1000, 1], topic=tr._keys.topic(T))
    step = load_script("copy_history").call(
        [G, 2], topic=tr._keys.topic(T), group=tr._keys.group(T, G)
    )
    [(outcome, _)] = await tr._run("subscribe", [begin])
    [(complete, copied)] = await tr._run("copy_history", [step])
    assert (outcome, complete, copied) == (2, 0, 2)
    assert await tr.groups(T) == [G2]
    assert await tr.unsubscribe(T, G)
    assert not any(b":g:billing:" in key for key in keys_of(redis_server, prefix))
    with redis_server.admin() as client:
        assert client.hgetall(f"{prefix}:{{{T}}}:pins") == {}
        refs = client.hgetall(f"{prefix}:{{{T}}}:refs")
    assert refs == {f"e{i}".encode(): b"2" for i in range(5)}  # G2 and the history
    assert await tr.unsubscribe(T, G) is False


async def test_body_stored_once_and_memory_returns_to_baseline(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    clock = ManualClock()
    prefix = "mem"
    tr = RedisTransport(server.url, key_prefix=prefix, clock=clock)
    await tr.connect()
    admin = server.admin()
    groups = [f"g{i}" for i in range(5)]
    topic_keys = Keys(prefix).topic(T)

    def used_memory() -> int:
        return int(admin.info("memory")["used_memory"])

    async def one_round(n: int) -> None:
        events = [(f"r{n}-e{i}", bytes(1024)) for i in range(400)]
        assert await tr.publish(T, events) == len(events) * len(groups)
        # One body per event for the topic, however many groups.
        assert admin.hlen(topic_keys.msg) == len(events)
        for g in groups:
            # Every path through the state machine, in every group.
            msgs = await tr.claim(g, [T], max_count=400, lease=10, max_attempts=2)
            assert all(await tr.ack([m.receipt for m in msgs[:100]]))
            for m in msgs[100:150]:
                assert await tr.nack(m.receipt, delay=1, error="E")
            for m in msgs[150:200]:
                assert await tr.kill(m.receipt, reason="handler", error="E")
            for m in msgs[200:250]:
                assert await tr.nack(m.receipt)
            # msgs[250:] are left to expire
        clock.advance(11)
        for g in groups:
            # The expired events come out one claim each (isolated), the retries together.
            retries: list[Message] = []
            for _ in range(250):
                got = await tr.claim(g, [T], max_count=400, lease=10, max_attempts=2)
                if not got:
                    break
                retries += got
            assert len(retries) == 250 and {m.attempt for m in retries} == {2}
            assert sum(m.isolated for m in retries) == 150
            for m in retries[:10]:
                assert await tr.nack(m.receipt)  # third delivery would exceed max_attempts
            assert all(await tr.ack([m.receipt for m in retries[10:]]))
            assert await tr.claim(g, [T], max_count=400, lease=10, max_attempts=2) == []
            dead = [d.event_id for d in await tr.dead_letters(T, g, limit=100)]
            assert len(dead) == 60
            assert await tr.replay_dead(T, g, dead[:25]) == 25
            assert await tr.purge_dead(T, g) == 35
            replayed = await tr.claim(g, [T], max_count=400, lease=10, max_attempts=2)
            assert sorted(m.event_id for m in replayed) == sorted(dead[:25])
            assert all(await tr.ack([m.receipt for m in replayed]))
            assert await tr.stats(T, g) == QueueStats(T, g, 0, 0, 0, 0)

    for g in groups:
        await tr.subscribe(T, g)
    await one_round(0)  # warm up allocator and script cache
    baseline_keys, baseline_memory = admin.dbsize(), used_memory()
    for n in range(1, 4):
        await one_round(n)
    assert admin.dbsize() == baseline_keys
    # The subscriptions and their counters (publishes, each group's acks) stay.
    assert set(admin.scan_iter(count=1000)) == {
        f"{prefix}:topics".encode(),
        topic_keys.groups.encode(),
        topic_keys.published.encode(),
        *(Keys(prefix).group(T, g).acked.encode() for g in groups),
    }
    # Allocator noise only: far less than one round's 400 x 1 KiB bodies.
    assert used_memory() - baseline_memory < 200_000
    admin.close()
    await tr.close()


# -- waiting -----------------------------------------------------------------------------


async def test_wait_wakes_within_milliseconds_of_a_publish_elsewhere(
    make: MakeTransport,
) -> None:
    prefix = unique_prefix()
    consumer = await make(key_prefix=prefix)
    publisher = await make(key_prefix=prefix)  # its own pools: another connection
    await consumer.subscribe(T, G)
    await consumer.subscribe("other", G)
    waiter = asyncio.create_task(consumer.wait(G, ["other", T], 5.0))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await publisher.publish(T, [("e1", b"x")])
    assert await asyncio.wait_for(waiter, 5.0) is True
    assert time.monotonic() - started < 1.0


async def test_wait_does_not_sleep_past_a_lease_it_knows(make: MakeTransport) -> None:
    tr = await make(sweep_interval=30)  # no sweep: only the known deadline can wake it
    await tr.subscribe(T, G)
    await tr.publish(T, [("e1", b"x")])
    await tr.claim(G, [T], max_count=1, lease=0.3, max_attempts=3)
    started = time.monotonic()
    assert await tr.wait(G, [T], 5.0) is True
    assert time.monotonic() - started < 2.0
    [m] = await tr.claim(G, [T], max_count=1, lease=5, max_attempts=3)
    assert m.attempt == 2


async def test_sweep_finds_leases_of_a_consumer_that_died(make: MakeTransport) -> None:
    prefix = unique_prefix()
    dead = await make(key_prefix=prefix)
    waiter = await make(key_prefix=prefix, sweep_interval=0.2)
    await dead.subscribe(T, G)
    await dead.publish(T, [("e1", b"x")])
    await dead.claim(G, [T], max_count=1, lease=0.3, max_attempts=3)
    await dead.close()  # never acks
    started = time.monotonic()
    assert await waiter.wait(G, [T], 5.0) is True
    assert time.monotonic() - started < 2.0
    [m] = await waiter.claim(G, [T], max_count=1, lease=5, max_attempts=3)
    assert (m.event_id, m.attempt) == ("e1", 2)


async def test_nack_with_delay_elsewhere_wakes_a_waiter_in_time(make: MakeTransport) -> None:
    prefix = unique_prefix()
    worker = await make(key_prefix=prefix)
    waiter = await make(key_prefix=prefix, sweep_interval=30)
    await worker.subscribe(T, G)
    await worker.publish(T, [("e1", b"x")])
    [m] = await worker.claim(G, [T], max_count=1, lease=5, max_attempts=3)
    task = asyncio.create_task(waiter.wait(G, [T], 5.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await worker.nack(m.receipt, delay=0.3)
    # Woken by the nack, as a consumer would be, the waiter claims: before the retry is
    # due that claim finds nothing but tells it the due time, and the next wait ends then.
    assert await asyncio.wait_for(task, 5.0) is True
    claimed = await waiter.claim(G, [T], max_count=1, lease=5, max_attempts=3)
    if not claimed:
        assert await waiter.wait(G, [T], 5.0) is True
        claimed = await waiter.claim(G, [T], max_count=1, lease=5, max_attempts=3)
    assert time.monotonic() - started < 2.0
    [again] = claimed
    assert again.attempt == 2


# -- big batches -------------------------------------------------------------------------


async def test_ended_dedup_windows_are_forgotten_in_bounded_steps(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    clock = ManualClock()
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix, clock=clock)
    dedup = Keys(prefix).topic(T).dedup
    await tr.subscribe(T, G)
    old = [(f"old{i:04d}", b"x") for i in range(1000)]
    assert await tr.publish(T, old, dedup_window=1.5) == 1000
    assert all(
        await tr.ack(
            [m.receipt for m in await tr.claim(G, [T], max_count=1000, lease=5, max_attempts=2)]
        )
    )
    clock.advance(2)
    with redis_server.admin() as admin:
        assert admin.zcard(dedup) == 1000  # ended, but nobody has published since
        sizes = []
        for n in range(10):
            batch = [(f"new{n}-{i}", b"x") for i in range(50)]
            assert await tr.publish(T, batch, dedup_window=1.5) == 50
            sizes.append(admin.zcard(dedup))
        # Each publish forgets up to 2 x 50 + 16 ended windows and records 50.
        assert sizes[0] == 1000 - 116 + 50
        assert sizes[-1] == 500
        clock.advance(2)
        assert await tr.publish(T, [("last", b"x")]) == 1
        assert admin.zcard(dedup) == 500 - 18  # without a window: forgets, records nothing


async def test_thousands_of_events_in_one_call(make: MakeTransport) -> None:
    clock = ManualClock()
    tr = await make(clock=clock)
    n = 5000
    await tr.subscribe(T, G)
    ids = [f"e{i:05d}" for i in range(n)]
    assert await tr.publish(T, [(i, b"x") for i in ids]) == n
    msgs = await tr.claim(G, [T], max_count=n, lease=1, max_attempts=2)
    assert [m.event_id for m in msgs] == ids
    assert await tr.extend([m.receipt for m in msgs], 5) == [True] * n
    clock.advance(6)  # all 5000 leases expire at once: READY at once, moved 1000 a call
    assert (await tr.stats(T, G)).ready == n
    # Every event had its one attempt: claims hand out nothing and bury them, at most
    # 1000 per call, so that one call's work stays bounded.
    for _ in range(n // 1000):
        assert await tr.claim(G, [T], max_count=n, lease=1, max_attempts=1) == []
    assert await tr.stats(T, G) == QueueStats(T, G, 0, 0, 0, n)
    assert await tr.replay_dead(T, G) == n
    replayed = await tr.claim(G, [T], max_count=n, lease=1, max_attempts=2)
    assert len(replayed) == n
    assert await tr.ack([m.receipt for m in replayed]) == [True] * n
    assert await tr.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)


async def test_thousands_of_dead_events_go_a_thousand_per_call_in_death_order(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    # One call replaying or purging every dead event at once held Redis up for as long
    # as the list was long; now each call takes at most a thousand.
    tr = await make()
    n = 2500
    await tr.subscribe(T, G)
    await tr.publish(T, [(f"e{i:04d}", b"x") for i in range(n)])
    msgs = await tr.claim(G, [T], max_count=n, lease=60, max_attempts=5)
    for message in reversed(msgs):  # they die in reverse id order
        assert await tr.kill(message.receipt, reason="handler")
    died = [m.event_id for m in reversed(msgs)]

    def script_calls() -> int:
        with redis_server.admin() as admin:
            stats = admin.info("commandstats")
        return int(stats["cmdstat_evalsha"]["calls"])

    before = script_calls()
    assert await tr.replay_dead(T, G) == n
    assert script_calls() - before == 3  # 1000 + 1000 + 500
    replayed = await tr.claim(G, [T], max_count=n, lease=60, max_attempts=5)
    assert [m.event_id for m in replayed] == died
    for message in replayed:
        assert await tr.kill(message.receipt, reason="handler")
    before = script_calls()
    assert await tr.purge_dead(T, G) == n
    assert script_calls() - before == 3
    assert await tr.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
    assert await tr.purge_dead(T, G) == 0


async def test_thousands_of_dead_events_of_ordered_keys_replay_in_death_order(
    make: MakeTransport,
) -> None:
    # Replayed by batches, each batch's events must join their keys' histories behind the
    # batch before's: a key's events come out again in the order they died.
    tr = await make()
    n = 2400
    await tr.subscribe(T, G, ordered=True)
    await tr.publish(
        T, [(f"e{i:04d}", b"x") for i in range(n)], keys=[f"k{i % 2}" for i in range(n)]
    )

    async def each_head(settle: Callable[[Message], Awaitable[bool]]) -> list[str]:
        seen: list[str] = []
        for _ in range(n):  # the head of each key at a time
            msgs = await tr.claim(G, [T], max_count=n, lease=60, max_attempts=5)
            if not msgs:
                break
            for message in msgs:
                seen.append(message.event_id)
                assert await settle(message)
        return seen

    died = await each_head(lambda m: tr.kill(m.receipt, reason="handler"))
    assert len(died) == n
    assert await tr.replay_dead(T, G) == n

    async def ack(message: Message) -> bool:
        return (await tr.ack([message.receipt])) == [True]

    replayed = await each_head(ack)
    for key in ("0", "1"):
        of_key = [e for e in died if int(e[1:]) % 2 == int(key)]
        assert [e for e in replayed if int(e[1:]) % 2 == int(key)] == of_key


async def test_replaying_every_dead_event_takes_none_that_died_after_it_began(
    make: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replayed event that fails again while the replay goes on dies again; its last batch
    # must not take it (it was not dead when the replay began): it waits for the next replay.
    tr = await make()
    n, again = 1500, 300
    await tr.subscribe(T, G)
    await tr.publish(T, [(f"e{i:04d}", b"x") for i in range(n)])
    for message in await tr.claim(G, [T], max_count=n, lease=60, max_attempts=5):
        assert await tr.kill(message.receipt, reason="handler")
    each = tr._each
    batches = 0

    async def failing_again(op: str, calls: Any) -> dict[Any, Any]:
        nonlocal batches
        replies = await each(op, calls)
        if op == "replay_dead":
            batches += 1
            if batches == 1:  # the first thousand are back; some of them die again
                msgs = await tr.claim(G, [T], max_count=again, lease=60, max_attempts=5)
                for message in msgs:
                    assert await tr.kill(message.receipt, reason="handler")
        return replies

    monkeypatch.setattr(tr, "_each", failing_again)
    assert await tr.replay_dead(T, G) == n
    assert batches == 2
    assert (await tr.stats(T, G)).dead == again
    monkeypatch.undo()
    assert await tr.replay_dead(T, G) == again


async def test_a_backlog_of_expiries_is_requeued_in_bounded_steps_in_order(
    make: MakeTransport, redis_server: RedisServer
) -> None:
    # Thousands of leases expire and retries fall due at once (a crowd of consumers
    # died). No call may move more than MAX_REQUEUE of them to READY (one call moving
    # them all blocked Redis), yet claims get them all, earliest first, before any
    # first delivery.
    max_requeue, n, step = 1000, 4000, 400
    clock = ManualClock()
    prefix = unique_prefix()
    tr = await make(key_prefix=prefix, clock=clock, sweep_interval=30)
    ready = Keys(prefix).group(T, G).ready
    await tr.subscribe(T, G)
    ids = [f"e{i:04d}" for i in range(n)]
    await tr.publish(T, [(i, b"x") for i in ids])
    msgs = await tr.claim(G, [T], max_count=n, lease=10, max_attempts=3)
    await tr.publish(T, [("late1", b"x"), ("late2", b"x")])
    # Chunks of the ids, last chunk first, come back one time step apart, alternately as
    # expiring leases and as delayed retries, so time order is not id order.
    expected: list[str] = []
    for start in reversed(range(0, n, step)):
        chunk = msgs[start : start + step]
        if start // step % 2:
            # (A lease never gets shorter: each extend moves its chunk later.)
            assert await tr.extend([m.receipt for m in chunk], 10) == [True] * step
        else:
            for m in chunk:
                assert await tr.nack(m.receipt, delay=10)
        expected += [m.event_id for m in chunk]
        clock.advance(0.5)
    clock.advance(10)

    with redis_server.admin() as admin:
        # Every expired or due event counts as READY at once, but one call moved only
        # MAX_REQUEUE of them, and a waiter does not sleep while the rest wait.
        assert await tr.stats(T, G) == QueueStats(T, G, n + 2, 0, 0, 0)
        assert admin.llen(ready) == max_requeue + 2
        started = time.monotonic()
        assert await tr.wait(G, [T], 5.0) is True
        assert time.monotonic() - started < 0.5
        claimed: list[str] = []
        while len(claimed) < n + 2:
            before = admin.llen(ready)
            got = await tr.claim(G, [T], max_count=7, lease=100, max_attempts=3)
            assert got and admin.llen(ready) - before <= max_requeue
            assert all(m.attempt == 2 for m in got if m.event_id in ids)
            claimed += [m.event_id for m in got]
        assert claimed == [*expected, "late1", "late2"]
        assert await tr.stats(T, G) == QueueStats(T, G, 0, n + 2, 0, 0)


# -- options and the plugin --------------------------------------------------------------


async def test_oversized_event_is_refused_before_anything_is_written(
    make: MakeTransport,
) -> None:
    tr = await make(max_body_bytes=100)
    await tr.subscribe(T, G)
    with pytest.raises(EventTooLarge, match="max_body_bytes"):
        await tr.publish(T, [("ok", b"x" * 100), ("big", b"x" * 101)])
    assert (await tr.stats(T, G)).ready == 0
    assert await tr.publish(T, [("ok", b"x" * 100)]) == 1


def test_plugin_builds_from_url_and_options(redis_url: str) -> None:
    clock = ManualClock()
    url = redis_url.replace("/0", "/0?key_prefix=from-url&max_body_bytes=10&sweep_interval=0.5")
    tr = make_transport(url, {"clock": clock, "key_prefix": "from-options", "unknown": 1})
    assert isinstance(tr, RedisTransport) and isinstance(tr, Transport)
    assert "from-options" in repr(tr)
    assert plugin.broker_make_transport("memory://", {}) is None
    info = plugin.broker_transport_info()
    schemes = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
    assert (info.name, info.schemes) == ("redis", schemes)
    assert info in installed_transports()
    secret = make_transport("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(secret)
    with pytest.raises(ValueError, match="key prefix"):
        RedisTransport(redis_url, key_prefix="bad{prefix}")
    with pytest.raises(ValueError, match="sweep_interval"):
        RedisTransport(redis_url + "?sweep_interval=0")
    with pytest.raises(ValueError, match="invalid option"):
        RedisTransport(redis_url + "?no_such_option=1")


async def test_unreachable_server_error_hides_the_password() -> None:
    tr = RedisTransport("redis://:hunter2@127.0.0.1:1/0", socket_connect_timeout=1)
    with pytest.raises(TransportError) as failed:
        await tr.connect()
    assert "hunter2" not in str(failed.value) and "cannot reach Redis" in str(failed.value)
    with pytest.raises(TransportError, match="not connected"):
        await tr.stats(T, G)


async def test_cancelled_wait_steals_no_wake_up(make: MakeTransport) -> None:
    prefix = unique_prefix()
    # One blocking connection only, and no sweep to rescue a lost wake-up.
    tr = await make(key_prefix=prefix, max_connections=1, sweep_interval=30)
    publisher = await make(key_prefix=prefix)
    await tr.subscribe(T, G)
    waiter = asyncio.create_task(tr.wait(G, [T], 5.0))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The cancelled BLPOP must not linger on the server and swallow the next marker.
    await publisher.publish(T, [("e1", b"x")])
    started = time.monotonic()
    assert await tr.wait(G, [T], 5.0) is True
    assert time.monotonic() - started < 1.0
    assert len(await tr.claim(G, [T], max_count=5, lease=5, max_attempts=1)) == 1


async def test_a_pool_at_max_connections_queues_callers_then_says_so(
    make: MakeTransport,
) -> None:
    # Each pool holds max_connections; a caller finding every connection busy waits up to
    # socket_timeout for one, then fails with a clear error, never hangs.
    tr = await make(max_connections=1, socket_timeout=0.3, sweep_interval=5)
    await tr.subscribe(T, G)
    holder = asyncio.create_task(tr.wait(G, [T], 3.0))  # holds the one blocking connection
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(TransportError, match="max_connections"):
        await tr.wait(G, [T], 3.0)
    assert 0.2 < time.monotonic() - started < 2.0
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder


# -- what the code and docs promise about themselves -------------------------------------


def test_options_live_in_their_own_module_with_documented_defaults() -> None:
    url = "redis://:pw@h:1/2?key_prefix=app&max_body_bytes=5&db_extra=x"
    parsed = parse_options(url, {"sweep_interval": 0.5, "max_connections": None})
    assert (parsed.url, parsed.key_prefix, parsed.max_body_bytes) == (
        "redis://:pw@h:1/2?db_extra=x",
        "app",
        5,
    )
    assert (parsed.sweep_interval, parsed.max_connections) == (0.5, DEFAULTS["max_connections"])
    assert {*DEFAULTS, "clock"} == OPTION_NAMES
    with pytest.raises(ValueError, match="max_connections"):
        parse_options("redis://h?max_connections=many", {})
    with pytest.raises(ValueError, match="not a Redis URL"):
        parse_options("memory://", {})
    # Every option is in the options table of docs/redis-keys.md, with its default first
    # in the Default column.
    defaults = {
        match[1]: match[2]
        for match in re.finditer(r"^\| `(\w+)` \| `([^`]*)`", REDIS_KEYS_DOC.read_text(), re.M)
    }
    assert not OPTION_NAMES - defaults.keys(), "options missing from docs/redis-keys.md"
    for name, default in DEFAULTS.items():
        documented = defaults[name]
        assert (documented if isinstance(default, str) else float(documented)) == default, name
    assert "max_event_bytes" in REDIS_KEYS_DOC.read_text()


def test_includes_never_read_keys_or_argv() -> None:
    # A helper takes what it needs as parameters: reading a script's KEYS or ARGV behind
    # its back would tie it to one script's argument layout.
    includes = resources.files("broker_redis").joinpath("scripts", "includes")
    for include in includes.iterdir():
        code = re.sub(r"--.*", "", include.read_text("utf-8"))
        assert not re.search(r"\b(KEYS|ARGV)\b", code), f"{include.name} reads KEYS or ARGV"


@pytest.mark.parametrize(
    ("version", "supported"),
    [("6.0.16", False), ("5.0.14", False), ("6.2.0", True), ("6.2.14-rc1", True), ("7.0.15", True)],
)
def test_servers_older_than_6_2_are_recognised(version: str, supported: bool) -> None:
    from broker_redis.transport import MIN_REDIS_VERSION, _version_tuple

    assert (_version_tuple(version) >= MIN_REDIS_VERSION) is supported


def test_a_test_server_never_answers_for_another_on_a_taken_port(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Two test sessions at once may pick the same free port: the second server must
    # not take the first one's answers for its own (it would share, and flush, its data).
    late = RedisServer(tmp_path / "late")
    late.port = redis_server.port
    late.start()
    try:
        assert late.port != redis_server.port
        with late.admin() as client:
            assert client.info("server")["process_id"] == late.process.pid  # type: ignore[union-attr]
    finally:
        late.stop()


async def test_unsubscribing_a_big_group_is_done_in_bounded_steps(
    redis_server: RedisServer, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_transport, "_TRIM_STEP", 100)
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    calls: list[str] = []
    run = tr._run

    async def counted(op: str, batch: Any) -> list[Any]:
        calls.append(op)
        return await run(op, batch)

    try:
        await tr.subscribe("big", "gone", ordered=True)
        await tr.subscribe("big", "stays")
        events = [(f"e{i}", b"x") for i in range(1000)]
        await tr.publish("big", events, keys=[f"k{i % 50}" for i in range(1000)])
        ms = await tr.claim("gone", ["big"], max_count=50, lease=30, max_attempts=1)
        await tr.nack(ms[0].receipt, delay=60)  # DELAYED, LEASED, waiting in lanes, ...
        await tr.kill(ms[1].receipt, reason="handler")
        monkeypatch.setattr(tr, "_run", counted)
        assert await tr.unsubscribe("big", "gone") is True
        assert calls.count("unsubscribe") >= 10  # 1000 events, 100 per call
        assert await tr.unsubscribe("big", "gone") is False
        keys = Keys(key_prefix)
        with redis_server.admin() as admin:
            prefix = keys.group("big", "gone").ready.rsplit(":", 1)[0]
            assert admin.keys(f"{prefix}:*") == []
            assert admin.hlen(keys.topic("big").msg) == 1000  # "stays" holds them all
        stays = await tr.claim("stays", ["big"], max_count=1000, lease=30, max_attempts=1)
        assert await tr.ack([m.receipt for m in stays]) == [True] * 1000
        with redis_server.admin() as admin:
            assert admin.hlen(keys.topic("big").msg) == 0
    finally:
        await tr.close()
