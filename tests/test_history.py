"""Retention and history through the Broker, the CLI and on a real Redis: what the shared
conformance suite cannot show (concurrency with a long copy, memory, crashes, commands)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from broker_core import Broker, Event, ManualClock
from broker_core.cli import app
from broker_memory import MemoryStore, MemoryTransport
from broker_postgres.testing import PostgresServer, unique_schema
from broker_redis import RedisTransport
from broker_redis import transport as redis_transport
from broker_redis.keys import Keys
from broker_redis.scripts import load_script
from broker_redis.testing import RedisServer, unique_prefix

runner = CliRunner()


def _store_url(store: str, request: pytest.FixtureRequest) -> str:
    """A fresh, isolated Redis prefix or PostgreSQL schema (the CLI needs a shared store)."""
    if store == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.url(schema=unique_schema())
    redis_url: str = request.getfixturevalue("redis_url")
    return f"{redis_url}?key_prefix={unique_prefix()}"


class LedgerEntry(Event):
    topic: ClassVar[str | None] = "ledger"
    key_field: ClassVar[str | None] = "account"
    account: str
    seq: int


def _collect(broker: Broker) -> list[LedgerEntry]:
    """The events ``broker``'s handler will have seen, in order."""
    seen: list[LedgerEntry] = []

    @broker.on(LedgerEntry)
    async def handle(event: LedgerEntry) -> None:
        seen.append(event)

    return seen


async def _drain(broker: Broker, *, limit: int = 10_000) -> int:
    """Handle events one at a time until none is ready; how many."""
    for n in range(limit):
        if not await broker.pick():
            return n
    raise AssertionError("the queue never ran dry")


async def test_a_new_service_builds_its_state_from_history(broker_url: str) -> None:
    async with Broker.from_url(broker_url, group="billing") as billing:
        await billing.configure_topic("ledger", max_age=timedelta(days=7), max_events=1000)
        await billing.subscribe("ledger")
        _collect(billing)
        await billing.publish_many(LedgerEntry(account=f"a{i % 3}", seq=i) for i in range(9))
        assert await _drain(billing) == 9
        async with Broker.from_url(broker_url, group="reports") as reports:
            seen = _collect(reports)
            await reports.subscribe("ledger", ordered=True, start="earliest")
            await reports.publish(LedgerEntry(account="a0", seq=9))
            assert await _drain(reports) == 10
            assert [e.seq for e in seen] == list(range(10))
            [stats] = await reports.topic_stats("ledger")
            assert (stats.retained, stats.max_events, stats.max_age) == (10, 1000, 7 * 86400.0)
            assert await reports.rewind("ledger", dry_run=True) == 10
            assert await reports.rewind("ledger", to="earliest") == 10
            assert await _drain(reports) == 10
            assert [e.seq for e in seen[10:]] == list(range(10))
            future = datetime.now(UTC) + timedelta(hours=1)
            assert await reports.rewind("ledger", to=future) == 0


async def test_bad_history_arguments_are_refused(broker_url: str) -> None:
    async with Broker.from_url(broker_url, group="billing") as broker:
        with pytest.raises(ValueError, match="aware datetime"):
            await broker.subscribe("ledger", start=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="start must be"):
            await broker.subscribe("ledger", start="yesterday")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="latest"):
            await broker.rewind("ledger", to="latest")
        with pytest.raises(ValueError, match="max_age"):
            await broker.configure_topic("ledger", max_age=timedelta(0))
        with pytest.raises(ValueError, match="subscribe"):
            await broker.rewind("ledger")
        assert await broker.stats() == []


@pytest.mark.parametrize("store", ["redis", "postgres"])
async def test_a_long_history_copy_loses_and_doubles_nothing_while_publishers_run(
    store: str, request: pytest.FixtureRequest
) -> None:
    """The copy runs while publishers add events (on Redis in steps of 1000 entries, on
    PostgreSQL in one transaction); the new group gets every event once, each key's
    events in publish order."""
    url = _store_url(store, request)
    published: list[tuple[str, int]] = []
    async with Broker.from_url(url, group="old") as old:
        await old.configure_topic("ledger", max_events=100_000)
        await old.subscribe("ledger")
        batch = [LedgerEntry(account=f"k{i % 7}", seq=i) for i in range(5000)]
        await old.publish_many(batch)
        published += [(e.account, e.seq) for e in batch]
        stop = asyncio.Event()

        async def publish_meanwhile() -> None:
            seq = 5000
            for _ in range(400):  # bounded: at most 400 batches
                if stop.is_set():
                    return
                more = [LedgerEntry(account=f"k{i % 7}", seq=i) for i in range(seq, seq + 10)]
                await old.publish_many(more)
                published.extend((e.account, e.seq) for e in more)
                seq += 10
                await asyncio.sleep(0)

        publisher = asyncio.create_task(publish_meanwhile())
        async with Broker.from_url(url, group="new") as new:
            seen = _collect(new)
            await asyncio.sleep(0.01)
            await new.subscribe("ledger", ordered=True, start="earliest")
            await asyncio.sleep(0.05)  # live events after the copy joined
            stop.set()
            await publisher
            await _drain(new, limit=20_000)
    got = [(e.account, e.seq) for e in seen]
    assert len(published) > 5000
    assert sorted(got) == sorted(published), "lost or doubled events"
    for key in {k for k, _ in published}:
        mine = [s for k, s in got if k == key]
        assert mine == sorted(mine), f"key {key} out of order"


async def test_a_copy_cut_short_goes_on_at_the_next_subscribe(
    redis_server: RedisServer, key_prefix: str
) -> None:
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    try:
        await tr.configure_topic("ledger", max_events=10_000)
        await tr.publish("ledger", [(f"e{i}", b"x") for i in range(2500)])
        keys = Keys(key_prefix)
        # As if a subscriber crashed after its first step: begin the copy, run one step.
        original = tr._copy_histories

        async def crash_after_one_step(group: str, units: Sequence[Any]) -> int:
            [(topic, _, _)] = units
            call = load_script("copy_history").call(
                [group, 1000], topic=keys.topic(topic), group=keys.group(topic, group)
            )
            await tr._run("copy_history", [call])
            raise ConnectionError("killed mid-copy")

        tr._copy_histories = crash_after_one_step  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await tr.subscribe("ledger", "new", history=math.inf)
        assert await tr.groups("ledger") == []  # not yet a subscriber: no live event lost
        await tr.publish("ledger", [("late", b"y")])
        tr._copy_histories = original  # type: ignore[method-assign]
        await tr.subscribe("ledger", "new")  # a restart subscribes again, without options
        assert await tr.groups("ledger") == ["new"]
        assert (await tr.stats("ledger", "new")).ready == 2501
    finally:
        await tr.close()


async def test_redis_memory_returns_to_its_baseline_once_history_ages_out(
    redis_server: RedisServer, key_prefix: str
) -> None:
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    try:
        with redis_server.admin() as admin:
            before = admin.info("memory")["used_memory"]
            await tr.configure_topic("ledger", max_age=1.0)
            await tr.subscribe("ledger", "billing")
            body = b"x" * 500
            for start in range(0, 5000, 500):
                await tr.publish("ledger", [(f"e{i}", body) for i in range(start, start + 500)])
            msgs = await tr.claim("billing", ["ledger"], max_count=5000, lease=30, max_attempts=3)
            assert await tr.ack([m.receipt for m in msgs]) == [True] * 5000
            during = admin.info("memory")["used_memory"]
            assert (await tr.topic_stats("ledger")).retained == 5000
            await asyncio.sleep(1.1)
            # Claims trim a bounded part each: a consumer polling an idle topic frees it.
            for _ in range(200):
                await tr.claim("billing", ["ledger"], max_count=1, lease=30, max_attempts=3)
                if not admin.exists(Keys(key_prefix).topic("ledger").log):
                    break
            t = Keys(key_prefix).topic("ledger")
            assert admin.hlen(t.msg) == admin.hlen(t.refs) == admin.hlen(t.logged) == 0
            assert not admin.exists(t.log)
            after = admin.info("memory")["used_memory"]
        assert during - before > 2_000_000
        assert after - before < 200_000, (before, during, after)
    finally:
        await tr.close()


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_cli_topics_and_rewind(store: str, request: pytest.FixtureRequest) -> None:
    url = _store_url(store, request)

    async def prepare() -> None:
        async with Broker.from_url(url, group="reports") as broker:
            await broker.configure_topic("ledger", max_age=timedelta(hours=1))
            await broker.subscribe("ledger")
            _collect(broker)
            await broker.publish_many(LedgerEntry(account="a", seq=i) for i in range(3))
            assert await _drain(broker) == 3

    asyncio.run(prepare())
    listed = runner.invoke(app, ["topics", "--url", url])
    assert listed.exit_code == 0, listed.output
    assert "ledger" in listed.output and "1:00:00" in listed.output and "reports" in listed.output
    args = ["rewind", "--url", url, "--topic", "ledger", "--group", "reports", "--to", "earliest"]
    dry = runner.invoke(app, args)
    assert dry.exit_code == 0, dry.output
    assert "would deliver 3 events" in dry.output and "nothing changed" in dry.output
    stats = runner.invoke(app, ["stats", "--url", url])
    assert " 0 " in stats.output  # still nothing ready
    done = runner.invoke(app, [*args, "--yes"])
    assert done.exit_code == 0, done.output
    assert "3 events" in done.output
    again = runner.invoke(app, args)
    assert "would deliver 0 events" in again.output  # all three are held now
    bad = runner.invoke(app, [*args[:-1], "last tuesday"])
    assert bad.exit_code == 2 and "ISO time" in bad.output
    nobody = runner.invoke(
        app, ["rewind", "--url", url, "--topic", "ledger", "--group", "x", "--to", "earliest"]
    )
    assert nobody.exit_code == 2 and "does not subscribe" in nobody.output


async def test_memory_keeps_nothing_once_history_ages_out() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    tr = MemoryTransport(store=store)
    await tr.configure_topic("ledger", max_age=10.0)
    await tr.subscribe("ledger", "billing")
    await tr.publish("ledger", [(f"e{i}", b"x" * 100) for i in range(1000)])
    msgs = await tr.claim("billing", ["ledger"], max_count=1000, lease=30, max_attempts=3)
    assert await tr.ack([m.receipt for m in msgs]) == [True] * 1000
    topic = store._topics["ledger"]
    assert len(topic.log) == len(topic.held) == 1000  # the history holds them
    clock.advance(11)
    # A consumer polling the quiet topic frees a bounded part per claim.
    for _ in range(100):
        await tr.claim("billing", ["ledger"], max_count=1, lease=30, max_attempts=3)
        if not topic.log:
            break
    assert (len(topic.log), len(topic.logged), len(topic.held)) == (0, 0, 0)


# -- Redis copies in many steps, racing other calls (steps of 10 entries) ----------------


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """History copies and trims of 10 entries per script call: races become likely."""
    monkeypatch.setattr(redis_transport, "_COPY_STEP", 10)
    monkeypatch.setattr(redis_transport, "_TRIM_STEP", 10)


async def _ids_in_order(tr: RedisTransport, group: str) -> list[str]:
    ids: list[str] = []
    for _ in range(1000):  # an ordered group of one key hands out one event per claim
        ms = await tr.claim(group, ["ledger"], max_count=100, lease=30, max_attempts=3)
        if not ms:
            return ids
        assert await tr.ack([m.receipt for m in ms]) == [True] * len(ms)
        ids += [m.event_id for m in ms]
    raise AssertionError("never ran dry")


async def _copy_cut_short(tr: RedisTransport, prefix: str, group: str, begin: str) -> None:
    """Begin a history copy of ``group`` on ledger, as ``begin`` ("subscribe" or
    "rewind") does, and run one step of it: as a process that died mid-copy left it."""
    keys = Keys(prefix)
    if begin == "subscribe":
        args: list[str | int] = [group, "", "inf", tr._now_arg(), 1000, 1]
    else:
        args = [group, "inf", tr._now_arg(), 1000]
    reply = await tr._run(begin, [load_script(begin).call(args, topic=keys.topic("ledger"))])
    assert reply in ([[2, 0]], [2]), reply  # a copy is to be run
    step = load_script("copy_history").call(
        [group, 1000], topic=keys.topic("ledger"), group=keys.group("ledger", group)
    )
    await tr._run("copy_history", [step])


@pytest.mark.usefixtures("small_steps")
async def test_a_rewind_delivers_events_published_meanwhile_after_the_history(
    redis_server: RedisServer, key_prefix: str
) -> None:
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    try:
        await tr.configure_topic("ledger", max_events=1000)
        await tr.subscribe("ledger", "reports", ordered=True)
        history = [f"a{i:03d}" for i in range(200)]
        await tr.publish("ledger", [(i, b"x") for i in history], keys=["a"] * 200)
        assert await _ids_in_order(tr, "reports") == history

        async def publish_meanwhile() -> None:
            await asyncio.sleep(0)
            await tr.publish("ledger", [("live", b"y")], keys=["a"])

        rewound, _ = await asyncio.gather(
            tr.rewind("ledger", "reports", history=math.inf), publish_meanwhile()
        )
        assert rewound >= 200
        assert await _ids_in_order(tr, "reports") == [*history, "live"]
        assert await tr.groups("ledger") == ["reports"]
    finally:
        await tr.close()


async def test_removing_retention_during_a_copy_loses_no_live_event(
    redis_server: RedisServer, key_prefix: str
) -> None:
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    try:
        await tr.configure_topic("ledger", max_events=10_000)
        history = [f"e{i:04d}" for i in range(2500)]
        await tr.publish("ledger", [(i, b"x") for i in history])
        # A new group's copy has taken its first step when retention is removed.
        await _copy_cut_short(tr, key_prefix, "new", "subscribe")
        await tr.configure_topic("ledger")
        await tr.publish("ledger", [("late1", b"y"), ("late2", b"y")])
        await tr.subscribe("ledger", "new")
        assert await _ids_in_order(tr, "new") == [*history, "late1", "late2"]
        assert (await tr.topic_stats("ledger")).retained == 0
    finally:
        await tr.close()


async def test_an_id_a_copy_has_yet_to_read_stays_held(
    redis_server: RedisServer, key_prefix: str
) -> None:
    clock = ManualClock()
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix, clock=clock)
    await tr.connect()
    try:
        await tr.configure_topic("ledger", max_age=10.0)
        await tr.subscribe("ledger", "old")
        await tr.publish("ledger", [(f"e{i}", b"v1") for i in range(1500)])
        assert len(await _ids_in_order(tr, "old")) == 1500
        # A new group's copy stops after its first step (its process died).
        await _copy_cut_short(tr, key_prefix, "new", "subscribe")
        clock.advance(11)  # e1000.. expired since, but the copy began before
        assert await tr.publish("ledger", [("e1400", b"v2")]) == 0, "the copy still holds it"
        await tr.subscribe("ledger", "new")  # the restarted service carries on
        got = await tr.claim("new", ["ledger"], max_count=2000, lease=30, max_attempts=3)
        assert [m.event_id for m in got] == [f"e{i}" for i in range(1500)]
        assert {m.body for m in got} == {b"v1"}
        assert await _ids_in_order(tr, "old") == []
    finally:
        await tr.close()


async def test_a_consumer_carries_on_a_copy_its_group_was_left_with(
    redis_server: RedisServer, key_prefix: str
) -> None:
    tr = RedisTransport(redis_server.url, key_prefix=key_prefix)
    await tr.connect()
    try:
        await tr.configure_topic("ledger", max_events=10_000)
        await tr.subscribe("ledger", "reports")
        await tr.publish("ledger", [(f"e{i}", b"x") for i in range(2500)])
        assert len(await _ids_in_order(tr, "reports")) == 2500
        # `broker rewind --yes` killed after its first step: the group is out of fan-out.
        await _copy_cut_short(tr, key_prefix, "reports", "rewind")
        assert await tr.groups("ledger") == []
        await tr.publish("ledger", [("live", b"y")])
        # The group's running consumer only claims: that carries the copy on.
        got: list[str] = []
        for _ in range(200):
            ms = await tr.claim("reports", ["ledger"], max_count=500, lease=30, max_attempts=3)
            await tr.ack([m.receipt for m in ms])
            got += [m.event_id for m in ms]
            if "live" in got:
                break
            await asyncio.sleep(0.01)
        assert got == [*(f"e{i}" for i in range(2500)), "live"]
        assert await tr.groups("ledger") == ["reports"]
    finally:
        await tr.close()
