"""The Broker facade end to end on every transport: publish, handle, retry, dead letters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

from broker_core import (
    Broker,
    BrokerOptions,
    Delivery,
    Event,
    EventTooLarge,
    InvalidEvent,
    InvalidName,
    LeaseLost,
    ManualClock,
    RetryPolicy,
    UnknownEvent,
    UnknownTransport,
)
from broker_memory import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=0)


class OrderPlaced(Event):
    topic: ClassVar[str] = "orders"
    order_id: str
    total: float


class OrderCancelled(Event):
    topic: ClassVar[str] = "orders"
    order_id: str


class Topicless(Event):
    value: int


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def make(broker_url: str, clock: ManualClock) -> AsyncIterator[Callable[..., Broker]]:
    """Build connected brokers on one store and clock; all closed at the end."""
    brokers: list[Broker] = []

    def build(group: str | None = "billing", **options: Any) -> Broker:
        options.setdefault("retry", NO_WAIT)
        broker = Broker.from_url(
            broker_url, group=group, transport_options={"clock": clock}, **options
        )
        brokers.append(broker)
        return broker

    yield build
    for broker in brokers:
        await broker.close()


async def started(broker: Broker) -> Broker:
    await broker.connect()
    return broker


async def test_publish_reaches_every_subscribed_group(make: Callable[..., Broker]) -> None:
    billing, shipping, publisher = make("billing"), make("shipping"), make(None)
    for broker in (billing, shipping, publisher):
        await broker.connect()
    assert await publisher.publish(OrderPlaced(order_id="1", total=1)) == 0
    await billing.subscribe("orders")
    await shipping.subscribe("orders")
    assert await publisher.publish(OrderPlaced(order_id="2", total=2)) == 2

    seen: dict[str, list[str]] = {"billing": [], "shipping": []}
    for broker in (billing, shipping):

        @broker.on(OrderPlaced)
        async def handle(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
            seen[delivery.group].append(event.order_id)

        assert await broker.pick() is True
        assert await broker.pick() is False
    # The event published before the subscriptions reached nobody.
    assert seen == {"billing": ["2"], "shipping": ["2"]}


async def test_handler_receives_typed_event_and_delivery(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    got: list[tuple[Any, ...]] = []

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
        got.append((type(event), event.order_id, event.total, delivery.topic, delivery.group))
        got.append((delivery.attempt, delivery.event is event, delivery.event_id == event.id))

    await broker.subscribe("orders")
    sent = OrderPlaced(order_id="7", total=9.5, headers={"trace": "x"})
    await broker.publish(sent)
    assert await broker.pick()
    assert got == [(OrderPlaced, "7", 9.5, "orders", "billing"), (1, True, True)]
    [stats] = await broker.stats("orders")
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)


async def test_plain_function_handler_runs_in_a_worker_thread(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    threads: list[int] = []

    @broker.on(OrderPlaced)
    def handle(event: OrderPlaced) -> None:
        threads.append(threading.get_ident())

    await broker.subscribe("orders")
    await broker.publish(OrderPlaced(order_id="1", total=1))
    assert await broker.pick()
    assert threads and threads[0] != threading.get_ident()


async def test_failure_is_retried_then_dead_lettered(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    attempts: list[int] = []

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
        attempts.append(delivery.attempt)
        raise ValueError(f"cannot bill {event.order_id}")

    await broker.subscribe("orders")
    event = OrderPlaced(order_id="9", total=1)
    await broker.publish(event)
    for _ in range(3):
        assert await broker.pick()
    assert await broker.pick() is False
    assert attempts == [1, 2, 3]
    [letter] = await broker.dead_letters("orders")
    assert (letter.event_id, letter.reason, letter.attempts) == (event.id, "max_attempts", 3)
    assert letter.error == "ValueError: cannot bill 9"

    assert await broker.replay_dead("orders") == 1
    assert await broker.pick()
    assert attempts == [1, 2, 3, 1]
    assert await broker.purge_dead("orders") == 0


async def test_retry_waits_for_its_backoff(make: Callable[..., Broker], clock: ManualClock) -> None:
    broker = await started(make(retry=RetryPolicy(initial_delay=10, max_delay=10, jitter=0)))
    calls = 0

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("flaky")

    await broker.subscribe("orders")
    await broker.publish(OrderPlaced(order_id="1", total=1))
    assert await broker.pick()
    [stats] = await broker.stats("orders")
    assert stats.delayed == 1
    clock.advance(9.9)
    assert await broker.pick() is False
    clock.advance(0.2)
    assert await broker.pick()
    assert calls == 2
    [stats] = await broker.stats("orders")
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)


async def test_per_handler_max_attempts(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    calls = 0

    @broker.on(OrderPlaced, max_attempts=1)
    async def handle(event: OrderPlaced) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("no")

    await broker.subscribe("orders")
    await broker.publish(OrderPlaced(order_id="1", total=1))
    assert await broker.pick()
    assert await broker.pick() is False
    assert calls == 1
    assert [d.reason for d in await broker.dead_letters("orders")] == ["max_attempts"]


async def test_undecodable_body_goes_to_dead_letters(make: Callable[..., Broker]) -> None:
    broker = await started(make())

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        raise AssertionError("must not run")

    await broker.subscribe("orders")
    await broker.transport.publish("orders", [("bad-1", b"\x00 not json")])
    bad_data = (
        b'{"v":1,"id":"bad-2","type":"OrderPlaced","topic":"orders",'
        b'"occurred_at":"2026-01-01T00:00:00Z","headers":{},"data":{"order_id":"1"}}'
    )
    await broker.transport.publish("orders", [("bad-2", bad_data)])
    assert await broker.pick()
    assert await broker.pick()
    letters = {d.event_id: d for d in await broker.dead_letters("orders")}
    assert letters.keys() == {"bad-1", "bad-2"}
    assert {d.reason for d in letters.values()} == {"undecodable"}
    assert "not an event envelope" in (letters["bad-1"].error or "")
    assert "total" in (letters["bad-2"].error or "")


async def test_topic_handler_gets_unknown_types(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    got: list[Event] = []

    @broker.on(OrderPlaced)
    async def placed(event: OrderPlaced) -> None:
        got.append(event)

    @broker.on("orders")
    async def anything(event: Event) -> None:
        got.append(event)

    await broker.subscribe("orders")
    foreign = (
        b'{"v":1,"id":"f1","type":"Refunded","topic":"orders",'
        b'"occurred_at":"2026-01-01T00:00:00Z","headers":{},"data":{"amount":3}}'
    )
    await broker.publish(OrderPlaced(order_id="1", total=1))
    await broker.transport.publish("orders", [("f1", foreign)])
    await broker.publish(OrderCancelled(order_id="1"))
    while await broker.pick():
        pass
    assert [type(e) for e in got] == [OrderPlaced, UnknownEvent, OrderCancelled]
    unknown = got[1]
    assert isinstance(unknown, UnknownEvent)
    assert (unknown.type, unknown.data) == ("Refunded", {"amount": 3})


async def test_unhandled_types_are_acked_and_skipped(make: Callable[..., Broker]) -> None:
    broker = await started(make())

    @broker.on(OrderPlaced)
    async def placed(event: OrderPlaced) -> None:
        pass

    await broker.subscribe("orders")
    await broker.publish(OrderCancelled(order_id="1"))
    assert await broker.pick()
    [stats] = await broker.stats("orders")
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)


async def test_oversized_event_is_refused_and_nothing_is_stored(
    make: Callable[..., Broker],
) -> None:
    broker = await started(make(max_event_bytes=300))
    await broker.subscribe("orders")
    with pytest.raises(EventTooLarge, match="max_event_bytes=300"):
        await broker.publish(OrderPlaced(order_id="x" * 500, total=1))
    with pytest.raises(EventTooLarge):
        await broker.publish_many(
            [OrderPlaced(order_id="ok", total=1), OrderPlaced(order_id="x" * 500, total=1)]
        )
    [stats] = await broker.stats("orders")
    assert stats.ready == 0


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (OrderPlaced(order_id="\udcff", total=1), "data.order_id holds a lone surrogate"),
        (OrderPlaced(order_id="1", total=1, headers={"x": "\ud800"}), "headers.x holds"),
        (OrderPlaced(order_id="1", total=float("inf")), "data.total is inf"),
    ],
)
async def test_events_the_wire_cannot_carry_are_refused_and_nothing_is_stored(
    make: Callable[..., Broker], bad: OrderPlaced, where: str
) -> None:
    broker = await started(make())
    await broker.subscribe("orders")
    with pytest.raises(InvalidEvent, match=f"'OrderPlaced' event '{bad.id}': {where}"):
        await broker.publish(bad)
    with pytest.raises(InvalidEvent, match=where):
        await broker.publish_many([OrderPlaced(order_id="ok", total=1), bad])
    [stats] = await broker.stats("orders")
    assert stats.ready == 0


async def test_bad_names_and_topicless_events_are_refused(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    with pytest.raises(InvalidName, match="topic"):
        await broker.subscribe("orders:{all}")
    with pytest.raises(InvalidName):
        await broker.publish(OrderPlaced(order_id="1", total=1), topic="has space")
    with pytest.raises(InvalidName):
        broker.on("")
    with pytest.raises(ValueError, match="has no topic"):
        await broker.publish(Topicless(value=1))
    with pytest.raises(ValueError, match="has no topic"):
        broker.on(Topicless)
    with pytest.raises(InvalidName, match="group"):
        make("bad group")
    with pytest.raises(InvalidName, match="group"):
        make("")
    with pytest.raises(ValueError, match="needs a group"):
        await make(None).subscribe("orders")
    assert await broker.publish(Topicless(value=1), topic="misc") == 0


EMPTY_NAME_CALLS: dict[str, Callable[[Broker], Any]] = {
    "publish topic": lambda b: b.publish(OrderPlaced(order_id="1", total=1), topic=""),
    "publish_many topic": lambda b: b.publish_many([OrderPlaced(order_id="1", total=1)], topic=""),
    "subscribe topic": lambda b: b.subscribe(""),
    "on topic": lambda b: b.on(""),
    "stats topic": lambda b: b.stats(""),
    "dead_letters topic": lambda b: b.dead_letters(""),
    "dead_letters group": lambda b: b.dead_letters("orders", group=""),
    "replay_dead topic": lambda b: b.replay_dead(""),
    "replay_dead group": lambda b: b.replay_dead("orders", group=""),
    "purge_dead topic": lambda b: b.purge_dead(""),
    "purge_dead group": lambda b: b.purge_dead("orders", group=""),
}


@pytest.mark.parametrize("call", EMPTY_NAME_CALLS.values(), ids=EMPTY_NAME_CALLS.keys())
async def test_empty_names_are_refused_everywhere(
    make: Callable[..., Broker], call: Callable[[Broker], Any]
) -> None:
    # An empty name must not fall back to the class's topic or the broker's own group.
    broker = await started(make())
    await broker.subscribe("orders")
    with pytest.raises(InvalidName, match="''"):
        result = call(broker)
        if asyncio.iscoroutine(result):
            await result
    [stats] = await broker.stats("orders")
    assert stats.ready == 0


async def test_duplicate_handlers_are_refused(make: Callable[..., Broker]) -> None:
    broker = make()

    @broker.on(OrderPlaced)
    async def first(event: OrderPlaced) -> None: ...

    with pytest.raises(ValueError, match="already has a handler"):

        @broker.on(OrderPlaced)
        async def second(event: OrderPlaced) -> None: ...


async def test_publish_many_is_one_transport_call_per_topic(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    await broker.subscribe("orders", "misc")
    calls: list[tuple[str, int]] = []
    publish = broker.transport.publish

    async def counting(topic: str, events: Any, **options: Any) -> int:
        calls.append((topic, len(events)))
        return await publish(topic, events, **options)

    broker.transport.publish = counting  # type: ignore[method-assign]
    events: list[Event] = [OrderPlaced(order_id=str(i), total=i) for i in range(5)]
    events += [Topicless(value=1)]
    with pytest.raises(ValueError, match="has no topic"):
        await broker.publish_many(events)
    assert calls == []
    reached = await broker.publish_many([*events[:5], OrderCancelled(order_id="1")])
    assert reached == 6
    assert calls == [("orders", 6)]
    order: list[str] = []

    @broker.on("orders")
    async def handle(event: Event) -> None:
        order.append(event.id)

    while await broker.pick():
        pass
    assert order == [e.id for e in events[:5]] + [order[-1]]


async def test_run_handles_everything_with_concurrency(make: Callable[..., Broker]) -> None:
    consumers = [await started(make(concurrency=4)) for _ in range(2)]
    publisher = await started(make(None))
    handled: list[str] = []
    running = 0
    peak = 0

    for broker in consumers:

        @broker.on(OrderPlaced)
        async def handle(event: OrderPlaced) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            handled.append(event.order_id)
            running -= 1

        await broker.subscribe("orders")
    await publisher.publish_many(OrderPlaced(order_id=str(i), total=i) for i in range(200))
    runs = [asyncio.create_task(b.run()) for b in consumers]
    async with asyncio.timeout(10):
        while len(handled) < 200:
            await asyncio.sleep(0.01)
    for broker in consumers:
        broker.stop()
    await asyncio.gather(*runs)
    assert sorted(handled, key=int) == [str(i) for i in range(200)]
    assert 1 < peak <= 8
    [stats] = await publisher.stats("orders")
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)


async def test_crashed_consumer_events_go_to_another(
    make: Callable[..., Broker], clock: ManualClock
) -> None:
    crashing, survivor = await started(make(lease=5)), await started(make(lease=5))
    entered = asyncio.Event()

    @crashing.on(OrderPlaced)
    async def hang(event: OrderPlaced) -> None:
        entered.set()
        await asyncio.Event().wait()

    attempts: list[int] = []

    @survivor.on(OrderPlaced)
    async def handle(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
        attempts.append(delivery.attempt)

    await crashing.subscribe("orders")
    await crashing.publish(OrderPlaced(order_id="1", total=1))
    run = asyncio.create_task(crashing.run())
    async with asyncio.timeout(5):
        await entered.wait()
    crashing.abort()
    await run
    # The crashed consumer gave nothing back: the event stays leased until expiry.
    assert await survivor.pick() is False
    clock.advance(5.1)
    assert await survivor.pick()
    assert attempts == [2]


async def test_lease_is_renewed_while_a_slow_handler_runs(broker_url: str) -> None:
    # Real time here: renewal is the consumer's own timer, lease / 3.
    options: dict[str, Any] = {"group": "billing", "lease": 0.3, "retry": NO_WAIT}
    slow, other = Broker.from_url(broker_url, **options), Broker.from_url(broker_url, **options)
    async with slow, other:
        done = asyncio.Event()
        attempts: list[int] = []

        @slow.on(OrderPlaced)
        async def handle(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
            attempts.append(delivery.attempt)
            await asyncio.sleep(1.0)
            done.set()

        @other.on(OrderPlaced)
        async def steal(event: OrderPlaced) -> None:
            raise AssertionError("the event was redelivered while its handler ran")

        await slow.subscribe("orders")
        await slow.publish(OrderPlaced(order_id="1", total=1))
        picking = asyncio.create_task(slow.pick())
        async with asyncio.timeout(5):
            while not attempts:
                await asyncio.sleep(0.01)
            for _ in range(5):
                await asyncio.sleep(0.15)
                assert await other.pick() is False
            await picking
        assert done.is_set()
        [stats] = await slow.stats("orders")
        assert (stats.ready, stats.leased) == (0, 0)


async def test_lost_lease_is_reported_and_late_ack_changes_nothing(
    make: Callable[..., Broker], clock: ManualClock
) -> None:
    stale, fresh = await started(make(lease=5)), await started(make(lease=5))
    release = asyncio.Event()
    outcome: list[str] = []

    @stale.on(OrderPlaced)
    async def slow(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
        await release.wait()
        try:
            await delivery.extend(5)
        except LeaseLost:
            outcome.append("lease lost")
        assert delivery.lease_lost

    holder: list[Delivery[OrderPlaced]] = []

    @fresh.on(OrderPlaced)
    async def take(event: OrderPlaced, delivery: Delivery[OrderPlaced]) -> None:
        holder.append(delivery)
        raise RuntimeError("keep it alive for a retry")

    await stale.subscribe("orders")
    await stale.publish(OrderPlaced(order_id="1", total=1))
    picking = asyncio.create_task(stale.pick())
    await asyncio.sleep(0.05)
    clock.advance(6)
    assert await fresh.pick()
    release.set()
    await picking
    assert outcome == ["lease lost"]
    # The stale handler returned normally, yet its ack did not finish the event: the
    # fresh consumer's retry of attempt 2 is still there.
    assert holder[0].attempt == 2
    [stats] = await fresh.stats("orders")
    assert stats.ready + stats.delayed == 1


async def test_stop_gives_back_events_whose_handlers_overrun_the_grace(
    make: Callable[..., Broker],
) -> None:
    broker = await started(make(shutdown_grace=0.1))
    started_handlers = asyncio.Event()

    @broker.on(OrderPlaced)
    async def forever(event: OrderPlaced) -> None:
        started_handlers.set()
        await asyncio.Event().wait()

    await broker.subscribe("orders")
    await broker.publish(OrderPlaced(order_id="1", total=1))
    run = asyncio.create_task(broker.run())
    async with asyncio.timeout(5):
        await started_handlers.wait()
        broker.stop()
        await run
    [stats] = await broker.stats("orders")
    assert (stats.ready, stats.leased) == (1, 0)


async def test_run_without_handlers_or_group_says_what_is_missing(
    make: Callable[..., Broker],
) -> None:
    with pytest.raises(RuntimeError, match="no handlers"):
        await make().run()
    nobody = make(None)

    @nobody.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None: ...

    with pytest.raises(ValueError, match="needs a group"):
        await nobody.pick()


def test_unknown_scheme_lists_installed_ones() -> None:
    with pytest.raises(UnknownTransport, match=r"'kafka'.*memory://.*redis://"):
        Broker.from_url("kafka://user:secret@host/")


def test_unknown_scheme_error_hides_the_password() -> None:
    with pytest.raises(UnknownTransport) as info:
        Broker.from_url("kafka://user:secret@host/")
    assert "secret" not in str(info.value)


async def test_from_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    monkeypatch.setenv("BROKER_URL", broker_url)
    monkeypatch.setenv("BROKER_GROUP", "billing")
    monkeypatch.setenv("BROKER_CONCURRENCY", "3")
    broker = Broker.from_settings()
    assert (broker.group, broker.options.concurrency, broker.options.url) == (
        "billing",
        3,
        broker_url,
    )


def test_a_transport_of_an_older_protocol_is_refused_by_name() -> None:
    class OldTransport(MemoryTransport):
        """A third-party transport written before release and max_body_bytes existed."""

        def __getattribute__(self, name: str) -> Any:
            if name in ("release", "max_body_bytes"):
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(TypeError, match=r"OldTransport .* lacks max_body_bytes, release"):
        Broker(OldTransport(), BrokerOptions(group="g"))


async def test_a_resent_event_is_handled_once_within_the_dedup_window(
    make: Callable[..., Broker], clock: ManualClock
) -> None:
    broker = await started(make())
    seen: list[str] = []

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    await broker.subscribe("orders")
    event = OrderPlaced(order_id="1", total=1)
    assert await broker.publish(event) == 1
    assert await broker.pick()
    clock.advance(299)  # acked long ago, its body freed: the relay re-sends it
    assert await broker.publish(event) == 0
    other = OrderPlaced(order_id="2", total=2)
    assert await broker.publish_many([event, other]) == 1  # the duplicate is skipped alone
    assert await broker.pick()
    assert await broker.pick() is False
    clock.advance(2)  # the default window of 300 s has ended
    assert await broker.publish(event) == 1
    assert await broker.pick()
    assert seen == ["1", "2", "1"]


async def test_without_a_dedup_window_a_done_event_is_new_again(
    make: Callable[..., Broker],
) -> None:
    broker = await started(make(dedup_window=0))
    seen: list[str] = []

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    await broker.subscribe("orders")
    event = OrderPlaced(order_id="1", total=1)
    assert await broker.publish(event) == 1
    assert await broker.publish(event) == 0  # still held: skipped all the same
    assert await broker.pick()
    assert await broker.publish(event) == 1
    assert await broker.pick()
    assert seen == ["1", "1"]


class KeyedOrder(Event):
    topic: ClassVar[str] = "orders"
    key_field: ClassVar[str | None] = "order_no"
    order_no: int


async def test_an_event_is_delivered_with_its_ordering_key(make: Callable[..., Broker]) -> None:
    broker = await started(make())
    keys: list[str | None] = []

    @broker.on("orders")
    async def handle(event: Event, delivery: Delivery[Event]) -> None:
        keys.append(delivery.key)

    await broker.subscribe("orders")
    await broker.publish(KeyedOrder(order_no=42))  # from key_field, as text
    await broker.publish(KeyedOrder(order_no=7), key="customer/1")  # an explicit key wins
    await broker.publish(OrderPlaced(order_id="1", total=1))  # no key field: no key
    await broker.publish_many([KeyedOrder(order_no=1), OrderPlaced(order_id="2", total=2)])
    while await broker.pick():
        pass
    assert keys == ["42", "customer/1", None, "1", None]
    with pytest.raises(InvalidName, match="ordering key"):
        await broker.publish(KeyedOrder(order_no=3), key="")
    with pytest.raises(InvalidName, match="ordering key"):
        await broker.publish(KeyedOrder(order_no=3), key="a\x00b")


def test_a_key_field_must_name_a_field() -> None:
    with pytest.raises(TypeError, match="key_field names 'order'"):

        class BrokenKeyField(Event):
            key_field: ClassVar[str | None] = "order"
            order_id: str


async def test_stats_tell_each_groups_lag(make: Callable[..., Broker]) -> None:
    broker = await started(
        make(retry=RetryPolicy(max_attempts=3, initial_delay=5, max_delay=5, jitter=0))
    )

    @broker.on(OrderPlaced)
    async def handle(event: OrderPlaced) -> None:
        raise ValueError("later")

    await broker.subscribe("orders")
    await broker.publish_many([OrderPlaced(order_id=str(i), total=i) for i in range(3)])
    [stats] = await broker.stats("orders")
    assert stats.lag == 3
    assert await broker.pick()  # retried: delayed, still not done
    [stats] = await broker.stats("orders")
    assert (stats.ready, stats.delayed, stats.lag) == (2, 1, 3)
