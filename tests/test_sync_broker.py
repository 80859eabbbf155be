"""SyncBroker: the Broker's calls without await, from many threads and after a fork."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar, TypeVar

import pytest

from broker_core import (
    Broker,
    Delivery,
    Event,
    EventTooLarge,
    InvalidName,
    RetryPolicy,
    SyncBroker,
    TransportError,
)
from broker_memory import MemoryTransport
from broker_redis.testing import unique_prefix

T = TypeVar("T")


class SyncOrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str


def on_async(url: str, action: Callable[[Broker], Awaitable[T]], **options: Any) -> T:
    """Run ``action`` on a connected async Broker of group billing, in a loop of its own."""

    async def main() -> T:
        async with Broker.from_url(url, group="billing", **options) as broker:
            return await action(broker)

    return asyncio.run(main())


async def subscribe(broker: Broker) -> None:
    await broker.subscribe("orders")


async def fail_everything(broker: Broker) -> int:
    """Pick every ready event with a handler that always fails: one attempt, then dead."""

    @broker.on(SyncOrderPlaced)
    async def handle(event: SyncOrderPlaced) -> None:
        raise ValueError(f"cannot bill {event.order_id}")

    picked = 0
    while await broker.pick():
        picked += 1
    return picked


@pytest.fixture
def sync(broker_url: str) -> Iterator[SyncBroker]:
    with SyncBroker.from_url(broker_url, group="billing") as broker:
        yield broker


def test_calls_do_what_the_async_broker_does(broker_url: str, sync: SyncBroker) -> None:
    on_async(broker_url, subscribe)
    first, second, third = (SyncOrderPlaced(order_id=str(n)) for n in range(3))
    assert sync.publish(first) == 1
    assert sync.publish(first) == 0  # a duplicate
    assert sync.publish_many(iter([second, third])) == 2
    assert sync.publish_many([]) == 0

    [stats] = sync.stats()
    assert (stats.topic, stats.group, stats.ready, stats.dead) == ("orders", "billing", 3, 0)
    assert sync.stats("orders") == sync.stats() == on_async(broker_url, lambda b: b.stats())

    assert on_async(broker_url, fail_everything, max_attempts=1) == 3
    letters = sync.dead_letters("orders")
    assert [letter.event_id for letter in letters] == [first.id, second.id, third.id]
    assert letters[0].error == "ValueError: cannot bill 0"
    assert letters == on_async(broker_url, lambda b: b.dead_letters("orders"))
    assert sync.dead_letters("orders", limit=1) == letters[:1]

    assert sync.replay_dead("orders", [first.id]) == 1
    assert sync.purge_dead("orders", [second.id]) == 1
    [stats] = sync.stats("orders")
    assert (stats.ready, stats.dead) == (1, 1)
    assert sync.purge_dead("orders") == 1
    assert sync.replay_dead("orders") == 0
    [stats] = on_async(broker_url, lambda b: b.stats("orders"))
    assert (stats.ready, stats.dead) == (1, 0)


def test_a_publisher_without_group_names_the_group_of_dead_letters(broker_url: str) -> None:
    on_async(broker_url, subscribe)
    with SyncBroker.from_url(broker_url) as publisher:
        assert publisher.publish(SyncOrderPlaced(order_id="1")) == 1
        on_async(broker_url, fail_everything, max_attempts=1)
        with pytest.raises(ValueError, match="needs a group"):
            publisher.dead_letters("orders")
        [letter] = publisher.dead_letters("orders", group="billing")
        assert publisher.replay_dead("orders", group="billing") == 1
        assert publisher.stats("orders")[0].ready == 1
        assert letter.reason == "max_attempts"


def test_sixteen_threads_publishing_at_once_lose_nothing(broker_url: str) -> None:
    on_async(broker_url, subscribe)
    threads, each = 16, 25
    # Not connected yet: the threads race for the loop's start and the connection too.
    publisher = SyncBroker.from_url(broker_url)
    start = threading.Barrier(threads, timeout=10)
    reached: list[int] = []
    errors: list[BaseException] = []

    def publish_some(number: int) -> None:
        try:
            start.wait()
            for n in range(each):
                if n % 5 == 0:
                    pair = [SyncOrderPlaced(order_id=f"{number}-{n}-{k}") for k in range(2)]
                    reached.append(publisher.publish_many(pair, timeout=30))
                else:
                    reached.append(publisher.publish(SyncOrderPlaced(order_id=f"{number}-{n}")))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=publish_some, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    try:
        assert not any(worker.is_alive() for worker in workers)
        assert errors == []
        expected = threads * (each + each // 5)
        assert sum(reached) == expected
        [stats] = publisher.stats("orders")
        assert (stats.group, stats.ready) == ("billing", expected)
    finally:
        publisher.close()


def publish_in_child(sync: SyncBroker, inherited: Broker, order_id: str) -> None:
    """In a forked child: publish through the parent's SyncBroker object."""
    if sync.broker is inherited:
        raise AssertionError("the child uses the parent's broker and its connections")
    if sync.publish(SyncOrderPlaced(order_id=order_id), timeout=10) != 1:
        raise AssertionError("the child's event reached no group")
    sync.close()


def test_a_forked_child_publishes_on_a_connection_of_its_own(redis_url: str) -> None:
    url = f"{redis_url}?key_prefix={unique_prefix()}"
    on_async(url, subscribe)
    with SyncBroker.from_url(url) as sync:
        assert sync.publish(SyncOrderPlaced(order_id="parent, before")) == 1
        children = [
            multiprocessing.get_context("fork").Process(
                target=publish_in_child, args=(sync, sync.broker, f"child {n}")
            )
            for n in range(2)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=30)
            if child.exitcode is None:
                child.kill()
                child.join(timeout=5)
        assert [child.exitcode for child in children] == [0, 0]
        assert sync.publish(SyncOrderPlaced(order_id="parent, after")) == 1
        [stats] = sync.stats("orders")
        assert stats.ready == 4


async def test_calls_from_a_running_event_loop_are_refused() -> None:
    sync = SyncBroker.from_url(f"memory://{unique_prefix()}", group="billing")
    event = SyncOrderPlaced(order_id="1")
    for call in (
        lambda: sync.publish(event),
        lambda: sync.publish_many([event]),
        sync.stats,
        lambda: sync.dead_letters("orders"),
        sync.connect,
        sync.close,
    ):
        with pytest.raises(RuntimeError, match=r"event loop.*use the async Broker"):
            call()
    # From a thread without a loop, the same object works.
    assert await asyncio.to_thread(sync.publish, event) == 0
    await asyncio.to_thread(sync.close)


def test_errors_of_the_async_broker_come_through_unchanged(broker_url: str) -> None:
    with SyncBroker.from_url(broker_url, max_event_bytes=200) as sync:
        with pytest.raises(InvalidName):
            sync.publish(SyncOrderPlaced(order_id="1"), topic="no spaces")
        with pytest.raises(EventTooLarge, match="max_event_bytes=200"):
            sync.publish_many([SyncOrderPlaced(order_id="x" * 300)])
        with pytest.raises(TypeError, match="takes Event instances"):
            sync.publish("not an event")  # type: ignore[arg-type]
        # Still usable after its calls failed.
        assert sync.publish(SyncOrderPlaced(order_id="1")) == 0


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_store_that_cannot_be_reached_raises_transport_error_and_may_be_retried() -> None:
    nobody = f"redis://127.0.0.1:{free_loopback_port()}/0?socket_connect_timeout=2"
    sync = SyncBroker.from_url(nobody)
    try:
        with pytest.raises(TransportError):
            sync.connect()
        with pytest.raises(TransportError):
            sync.publish(SyncOrderPlaced(order_id="1"))
    finally:
        sync.close()
    with pytest.raises(TransportError), SyncBroker.from_url(nobody):
        pass


class SlowPublish(MemoryTransport):
    """A store whose publish takes a minute."""

    async def publish(self, *args: Any, **kwargs: Any) -> int:
        await asyncio.sleep(60)
        return await super().publish(*args, **kwargs)


def test_a_call_that_runs_out_of_time_is_cancelled() -> None:
    transport = SlowPublish()
    with SyncBroker(lambda: Broker(transport)) as sync:
        asyncio.run(transport.subscribe("orders", "billing"))
        with pytest.raises(TimeoutError):
            sync.publish(SyncOrderPlaced(order_id="1"), timeout=0.2)
        [stats] = sync.stats("orders", timeout=10)
        assert stats.ready == 0
    # close() did not wait out the cancelled publish.


def test_close_stops_the_thread_is_idempotent_and_refuses_later_calls(broker_url: str) -> None:
    before = set(threading.enumerate())
    sync = SyncBroker.from_url(broker_url)
    assert set(threading.enumerate()) == before  # the loop starts on first use
    assert sync.stats() == []
    assert len(set(threading.enumerate()) - before) == 1
    sync.close()
    sync.close()
    assert set(threading.enumerate()) == before
    with pytest.raises(RuntimeError, match="closed"):
        sync.stats()
    with pytest.raises(RuntimeError, match="closed"):
        sync.connect()
    # One never used closes without starting anything.
    SyncBroker.from_url(broker_url).close()
    assert set(threading.enumerate()) == before


def test_options_and_settings_reach_the_async_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"memory://{unique_prefix()}"
    sync = SyncBroker.from_url(url, group="billing", retry=RetryPolicy(max_attempts=2))
    assert (sync.broker.options.url, sync.broker.group) == (url, "billing")
    assert sync.broker.options.retry.max_attempts == 2
    sync.close()

    monkeypatch.setenv("BROKER_URL", url)
    monkeypatch.setenv("BROKER_GROUP", "shipping")
    monkeypatch.setenv("BROKER_DEDUP_WINDOW", "5")
    with SyncBroker.from_settings() as configured:
        assert configured.broker.group == "shipping"
        assert configured.broker.options.dedup_window == 5
        assert isinstance(configured.broker.transport, MemoryTransport)


def test_publish_takes_an_ordering_key(broker_url: str) -> None:
    keys: list[str | None] = []

    async def handled(broker: Broker) -> None:
        @broker.on(SyncOrderPlaced)
        async def handle(event: SyncOrderPlaced, delivery: Delivery[SyncOrderPlaced]) -> None:
            keys.append(delivery.key)

        await broker.subscribe("orders")

    on_async(broker_url, handled)
    with SyncBroker.from_url(broker_url) as sync:
        assert sync.publish(SyncOrderPlaced(order_id="1"), key="customer/7") == 1

    async def drain(broker: Broker) -> None:
        @broker.on(SyncOrderPlaced)
        async def handle(event: SyncOrderPlaced, delivery: Delivery[SyncOrderPlaced]) -> None:
            keys.append(delivery.key)

        assert await broker.pick()

    on_async(broker_url, drain)
    assert keys == ["customer/7"]
