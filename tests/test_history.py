"""Retention and history through the Broker, the CLI and on a real Redis: what the shared
conformance suite cannot show (concurrency with a long copy, memory, crashes, commands)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from broker_core import Broker, Event
from broker_core.cli import app
from broker_postgres.testing import PostgresServer, unique_schema
from broker_redis import RedisTransport
from broker_redis.keys import Keys
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
        original = tr._copy_history

        async def crash_after_one_step(topic: str, group: str) -> int:
            from broker_redis.scripts import load_script

            call = load_script("copy_history").call(
                [group, 1000], topic=keys.topic(topic), group=keys.group(topic, group)
            )
            await tr._run("copy_history", [call])
            raise ConnectionError("killed mid-copy")

        tr._copy_history = crash_after_one_step  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await tr.subscribe("ledger", "new", history=math.inf)
        assert await tr.groups("ledger") == []  # not yet a subscriber: no live event lost
        await tr.publish("ledger", [("late", b"y")])
        tr._copy_history = original  # type: ignore[method-assign]
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
