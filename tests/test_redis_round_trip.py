"""The one-node call path (broker_redis.pool and broker_redis.roundtrip) when Redis fails.

Each test runs its own redis-server (``CLIENT PAUSE`` and ``CLIENT KILL`` would disturb
the shared one). ``CLIENT PAUSE <ms> WRITE`` holds every script call (our scripts
carry no ``no-writes`` flag) while the admin connection keeps working, so a call can be
caught in flight: it times out, is cancelled or loses its connection mid-call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.maint_notifications import MaintNotificationsConfig

from broker_core.errors import TransportError
from broker_redis.pool import Pool
from broker_redis.scripts import Call, Script, ScriptRunner, load_script
from broker_redis.testing import RedisFactory, RedisServer
from broker_redis.transport import RedisTransport

T, G = "orders", "billing"

MakeTransport = Callable[..., Awaitable[RedisTransport]]


@pytest.fixture
def server(redis_factory: RedisFactory) -> RedisServer:
    return redis_factory()


@pytest_asyncio.fixture
async def make(server: RedisServer) -> AsyncIterator[MakeTransport]:
    made: list[RedisTransport] = []

    async def build(query: str = "", **options: Any) -> RedisTransport:
        transport = RedisTransport(server.url + query, **options)
        made.append(transport)
        await transport.connect()
        await transport.subscribe(T, G)
        return transport

    yield build
    for transport in made:
        await transport.close()


def evalsha_calls(server: RedisServer) -> int:
    with server.admin() as admin:
        stats = admin.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))


def pause_scripts(server: RedisServer, ms: int) -> None:
    with server.admin() as admin:
        admin.execute_command("CLIENT", "PAUSE", ms, "WRITE")


def unpause(server: RedisServer) -> None:
    with server.admin() as admin:
        admin.execute_command("CLIENT", "UNPAUSE")


def kill_other_clients(server: RedisServer) -> int:
    with server.admin() as admin:
        return int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))


async def ready_ids(tr: RedisTransport) -> list[str]:
    claimed = await tr.claim(G, [T], max_count=100, lease=30, max_attempts=5)
    return [m.event_id for m in claimed]


async def test_a_timed_out_call_is_not_sent_again_and_its_late_reply_is_never_read(
    make: MakeTransport, server: RedisServer
) -> None:
    # One connection, so the next call would read the late reply if it stayed on it.
    tr = await make(max_connections=1, socket_timeout=0.4)
    assert await tr.publish(T, [("e0", b"w")]) == 1
    with server.admin() as admin:
        admin.config_resetstat()
    pause_scripts(server, 600)
    started = time.monotonic()
    # (Raised: so at its timeout, not answered at the pause's end.)
    with pytest.raises(TransportError, match="did not answer in time"):
        await tr.publish(T, [("e1", b"x")])
    assert time.monotonic() - started > 0.35
    # Sent while the server still holds the publish, answered once the pause is over:
    # its own reply, not the publish's (an integer, which stats cannot unpack).
    stats = await tr.stats(T, G)
    assert stats.ready in (1, 2)
    # The timed-out publish may have run; it was never sent a second time.
    assert evalsha_calls(server) <= 2
    assert await tr.publish(T, [("e2", b"y")]) == 1
    assert (await ready_ids(tr))[-1] == "e2"


async def test_retry_on_timeout_in_the_url_sends_a_timed_out_call_once_more(
    make: MakeTransport, server: RedisServer
) -> None:
    # redis-py's own policy, which the URL may ask for: one more attempt after a timeout.
    tr = await make("?retry_on_timeout=true", max_connections=1, socket_timeout=0.4)
    pause_scripts(server, 600)  # over by the second attempt
    assert await tr.publish(T, [("e1", b"x")]) == 1
    assert await ready_ids(tr) == ["e1"]


async def test_a_connection_killed_while_idle_is_replaced_at_checkout(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make(max_connections=2)
    assert await tr.publish(T, [("e1", b"x")]) == 1
    assert kill_other_clients(server) >= 1
    # Once the loop has seen the socket close, the checkout replaces the connection. (A
    # call made before that fails with "cannot reach Redis", as through redis-py.)
    await asyncio.sleep(0.05)
    assert await tr.publish(T, [("e2", b"y")]) == 1
    assert await ready_ids(tr) == ["e1", "e2"]


async def test_a_connection_killed_mid_call_raises_then_the_next_call_reconnects(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make(max_connections=1, socket_timeout=5)
    with server.admin() as admin:
        admin.config_resetstat()
    pause_scripts(server, 3000)
    call = asyncio.create_task(tr.publish(T, [("e1", b"x")]))
    await asyncio.sleep(0.2)
    assert not call.done()
    assert kill_other_clients(server) >= 1
    with pytest.raises(TransportError, match="cannot reach Redis"):
        await asyncio.wait_for(call, 5)
    unpause(server)
    assert await tr.publish(T, [("e2", b"y")]) == 1
    # The held call may still have run (Redis ran what it had read), but nothing sent it
    # again: one call for e1 at most, one for e2.
    assert evalsha_calls(server) <= 2
    assert (await ready_ids(tr))[-1] == "e2"


async def test_a_call_cancelled_mid_call_leaves_no_reply_behind_and_frees_its_connection(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make(max_connections=1, socket_timeout=3)
    pause_scripts(server, 3000)
    call = asyncio.create_task(tr.publish(T, [("e1", b"x")]))
    await asyncio.sleep(0.2)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    unpause(server)
    # The one connection is back in the pool (no wait for it), and the next calls read
    # their own replies, not the cancelled call's.
    started = time.monotonic()
    assert await tr.publish(T, [("e2", b"y")]) == 1
    assert time.monotonic() - started < 2.0  # the pool would make it wait 3 s
    stats = await tr.stats(T, G)
    ids = await ready_ids(tr)
    assert ids[-1] == "e2" and stats.ready == len(ids)


async def test_callers_beyond_max_connections_queue_in_order_and_all_get_through(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make(max_connections=1, socket_timeout=5)
    pause_scripts(server, 400)
    calls = []
    for i in range(8):
        calls.append(asyncio.create_task(tr.publish(T, [(f"e{i}", b"x")])))
        await asyncio.sleep(0.01)  # each queued behind the one before
    await asyncio.sleep(0.1)
    with server.admin() as admin:  # every other client is the transport's
        assert len(admin.client_list(_type="normal")) - 1 == 1
    assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [1] * 8
    assert await ready_ids(tr) == [f"e{i}" for i in range(8)]


async def test_a_caller_cancelled_while_queued_takes_no_connection_with_it(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make(max_connections=1, socket_timeout=5)
    pause_scripts(server, 400)
    holder = asyncio.create_task(tr.publish(T, [("e1", b"x")]))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(tr.publish(T, [("e2", b"y")]))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await asyncio.wait_for(holder, 5) == 1
    assert await asyncio.wait_for(tr.publish(T, [("e3", b"z")]), 1) == 1
    assert await ready_ids(tr) == ["e1", "e3"]


def _pool(server: RedisServer, max_connections: int, timeout: float) -> Pool:
    return Pool.from_url(
        server.url,
        max_connections=max_connections,
        timeout=timeout,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


async def test_a_connection_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next(
    server: RedisServer,
) -> None:
    pool = _pool(server, 1, 5)
    try:
        first = await pool.get_connection()
        second = asyncio.create_task(pool.get_connection())
        third = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0.01)  # both queued
        pool.put_back(first)  # handed to the second caller...
        second.cancel()  # ...cancelled before it could take it
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await asyncio.wait_for(third, 1) is first
        pool.put_back(first)
        assert await asyncio.wait_for(pool.get_connection(), 1) is first
    finally:
        await pool.aclose()


async def test_a_pool_at_its_limit_says_no_connection_after_its_timeout(
    server: RedisServer,
) -> None:
    pool = _pool(server, 1, 0.2)
    try:
        held = await pool.get_connection()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await pool.get_connection()
        assert 0.15 < time.monotonic() - started < 1.0
        pool.put_back(held)
        assert await asyncio.wait_for(pool.get_connection(), 1) is held
    finally:
        await pool.aclose()


async def test_a_connection_handed_over_as_the_wait_times_out_is_never_lost(
    server: RedisServer,
) -> None:
    # The hand-over and the waiter's timeout come due in one turn of the loop, in either
    # order: the waiter keeps the connection, or says "No connection available." and the
    # connection is idle in the pool; either way the one connection is there for the next.
    loop = asyncio.get_running_loop()
    for offset in (-0.02, 0.02):  # the hand-over just before, then just after the timeout
        pool = _pool(server, 1, 0.1)
        try:
            first = await pool.get_connection()
            started = loop.time()
            waiter = asyncio.create_task(pool.get_connection())
            await asyncio.sleep(0)  # queued, its timeout running
            loop.call_at(started + 0.1 + offset, pool.put_back, first)
            loop.call_soon(time.sleep, 0.3)  # holds the loop until both are due
            try:
                pool.put_back(await waiter)
            except RedisConnectionError as exc:
                assert str(exc) == "No connection available."
            assert await asyncio.wait_for(pool.get_connection(), 1) is first
        finally:
            await pool.aclose()


async def test_a_call_cancelled_while_its_connection_reconnects_leaves_none_half_open(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory(password="pw")
    url = f"redis://:pw@127.0.0.1:{server.port}/2?client_name=probed"
    tr = RedisTransport(url, max_connections=1, socket_timeout=2)
    await tr.connect()
    try:
        await tr.subscribe(T, G)
        assert await tr.publish(T, [("e1", b"x")]) == 1
        assert kill_other_clients(server) >= 1
        await asyncio.sleep(0.05)  # seen closed: the next checkout reconnects
        with server.admin() as admin:  # holds the reconnect's AUTH, SELECT and SETNAME
            admin.execute_command("CLIENT", "PAUSE", 500, "ALL")
        call = asyncio.create_task(tr.publish(T, [("e2", b"y")]))
        await asyncio.sleep(0.15)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The one connection is back, closed; reopened, it has the URL's password, db and
        # name, and the next call reads its own reply (not the cancelled handshake's).
        assert await asyncio.wait_for(tr.publish(T, [("e3", b"z")]), 2) == 1
        assert await ready_ids(tr) == ["e1", "e3"]
        with server.admin() as admin:
            ours = [c for c in admin.client_list(_type="normal") if c["name"] == "probed"]
        assert [c["db"] for c in ours] == ["2"] * len(ours) and ours
    finally:
        await tr.close()


def test_a_pool_refuses_what_it_does_not_do(server: RedisServer) -> None:
    with pytest.raises(ValueError, match="maintenance notifications"):
        Pool.from_url(server.url)


# -- NOSCRIPT: what the runner sends again ------------------------------------------------


def _poll_and_stats(tr: RedisTransport) -> list[Call]:
    unit = tr._units_of(T)[0]
    keys = tr._group_keys(unit, G)
    return [load_script("poll").call([""], group=keys), load_script("stats").call([""], group=keys)]


async def test_only_the_calls_answered_noscript_are_sent_again(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make()
    assert await tr.publish(T, [("e1", b"x")]) == 1
    with server.admin() as admin:
        admin.script_flush()
        admin.script_load(load_script("poll").source)  # stats is missing
        admin.config_resetstat()
    assert tr._scripts is not None
    poll, stats = await tr._scripts.run("wait", _poll_and_stats(tr))
    assert (poll[0], stats[0]) == (1, 1)  # one READY event, counted by each
    assert evalsha_calls(server) == 3  # both, then stats alone


class _Flushing(ScriptRunner):
    """Loads the scripts again, and has them flushed again before the call is re-sent."""

    flush: Callable[[], None]
    reloads = 0

    async def _reload(self, lost: Sequence[tuple[Script, NoScriptError]]) -> None:
        await super()._reload(lost)
        _Flushing.reloads += 1
        _Flushing.flush()


async def test_a_cache_flushed_again_and_again_fails_after_three_rounds(
    make: MakeTransport, server: RedisServer
) -> None:
    tr = await make()
    assert tr._scripts is not None and isinstance(tr._redis, Redis)
    admin = server.admin()
    _Flushing.flush = lambda: admin.script_flush()
    _Flushing.reloads = 0
    runner = _Flushing(tr._redis, tr._error)
    admin.script_flush()
    admin.config_resetstat()
    try:
        with pytest.raises(TransportError, match="keeps losing its scripts"):
            await runner.run("stats", _poll_and_stats(tr)[1:])
    finally:
        admin.close()
    assert (_Flushing.reloads, evalsha_calls(server)) == (3, 3)
