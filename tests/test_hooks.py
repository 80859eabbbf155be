"""Lifecycle hooks on every transport: the calls a plugin sees, in order, and their safety.

A recording plugin writes down every hook call; each test asserts the exact sequence a
scenario produces. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, cast

import pytest

from broker_core import (
    Broker,
    BrokerOptions,
    Delivery,
    Event,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    Transport,
    TransportError,
    UnknownTransport,
    hookimpl,
)
from broker_core.plugins import make_transport, plugin_manager
from broker_core.transport import Receipt
from broker_memory import MemoryTransport

NO_WAIT = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=0)
ACKED, RETRIED, DEAD = OutcomeKind.ACKED, OutcomeKind.RETRIED, OutcomeKind.DEAD
LEASE_LOST, RELEASED = OutcomeKind.LEASE_LOST, OutcomeKind.RELEASED


class Job(Event):
    topic: ClassVar[str] = "jobs"
    n: int


class Chore(Event):
    topic: ClassVar[str] = "chores"


Call = tuple[Any, ...]


class Recorder:
    """A plugin that records every lifecycle hook call, with what identifies it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    @hookimpl
    def broker_publish_before(self, topic: str, events: Sequence[Event]) -> None:
        self.calls.append(("publish_before", topic, [e.id for e in events]))

    @hookimpl
    def broker_publish_after(
        self, topic: str, events: Sequence[Event], copies: int | None, error: Exception | None
    ) -> None:
        self.calls.append(("publish_after", topic, [e.id for e in events], copies, error))

    @hookimpl
    def broker_consumer_started(self, group: str, topics: Sequence[str]) -> None:
        self.calls.append(("consumer_started", group, tuple(topics)))

    @hookimpl
    def broker_delivery_claimed(self, topic: str, group: str, event_id: str, attempt: int) -> None:
        self.calls.append(("claimed", topic, group, event_id, attempt))

    @hookimpl
    def broker_handler_started(self, delivery: Delivery[Any]) -> None:
        self.calls.append(("started", delivery.event_id, delivery.attempt))

    @hookimpl
    def broker_handler_finished(
        self, delivery: Delivery[Any], outcome: Outcome, exception: BaseException | None
    ) -> None:
        raised = None if exception is None else type(exception).__name__
        self.calls.append(("finished", delivery.event_id, outcome, raised))

    @hookimpl
    def broker_delivery_settled(self, delivery: Delivery[Any], outcome: Outcome) -> None:
        self.calls.append(("settled", delivery.event_id, outcome.kind))

    @hookimpl
    def broker_consumer_stopped(self, group: str, topics: Sequence[str]) -> None:
        self.calls.append(("consumer_stopped", group, tuple(topics)))

    def named(self, *hooks: str) -> list[Call]:
        """The calls of ``hooks`` only."""
        return [call for call in self.calls if call[0] in hooks]


class Raising:
    """A plugin whose every lifecycle hook raises."""

    @hookimpl
    def broker_publish_before(self) -> None:
        raise RuntimeError("publish_before")

    @hookimpl
    def broker_publish_after(self) -> None:
        raise RuntimeError("publish_after")

    @hookimpl
    def broker_consumer_started(self) -> None:
        raise RuntimeError("consumer_started")

    @hookimpl
    async def broker_delivery_claimed(self) -> None:
        raise RuntimeError("claimed")

    @hookimpl
    async def broker_handler_started(self) -> None:
        # Its own CancelledError (not a cancellation of the delivery) is a failure too.
        raise asyncio.CancelledError

    @hookimpl
    def broker_handler_finished(self) -> None:
        raise RuntimeError("finished")

    @hookimpl
    def broker_delivery_settled(self) -> None:
        raise RuntimeError("settled")

    @hookimpl
    def broker_consumer_stopped(self) -> None:
        raise RuntimeError("consumer_stopped")


async def _until(condition: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def make(broker_url: str) -> AsyncIterator[Callable[..., Awaitable[Broker]]]:
    """Build connected brokers of group ``g`` on one store; all closed at the end."""
    brokers: list[Broker] = []

    async def build(*plugins: object, **options: Any) -> Broker:
        options.setdefault("group", "g")
        options.setdefault("retry", NO_WAIT)
        options.setdefault("poll_interval", 0.05)
        broker = Broker.from_url(broker_url, plugins=plugins, **options)
        brokers.append(broker)
        await broker.connect()
        return broker

    yield build
    for broker in brokers:
        await broker.close()


async def _run_until(broker: Broker, condition: Callable[[], bool]) -> None:
    """Run ``broker`` until ``condition`` holds, then stop it and wait for the run to end."""
    running = asyncio.create_task(broker.run())
    try:
        await _until(condition)
    finally:
        broker.stop()
        await asyncio.wait_for(running, 5)


async def test_a_handled_event_from_publish_to_consumer_stop(make: Any) -> None:
    recorder = Recorder()
    broker = await make(recorder)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    await broker.subscribe("jobs")
    job = Job(n=1)
    await broker.publish(job)
    await _run_until(broker, lambda: bool(recorder.named("settled")))
    assert recorder.calls == [
        ("publish_before", "jobs", [job.id]),
        ("publish_after", "jobs", [job.id], 1, None),
        ("consumer_started", "g", ("jobs",)),
        ("claimed", "jobs", "g", job.id, 1),
        ("started", job.id, 1),
        ("finished", job.id, Outcome(ACKED), None),
        ("settled", job.id, ACKED),
        ("consumer_stopped", "g", ("jobs",)),
    ]


async def test_a_retried_then_acked_event(make: Any) -> None:
    recorder = Recorder()
    broker = await make(recorder)

    @broker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        if delivery.attempt == 1:
            raise ValueError("boom")

    await broker.subscribe("jobs")
    job = Job(n=1)
    await broker.publish(job)
    assert await broker.pick()
    assert await broker.pick()
    retried = Outcome(RETRIED, delay=0.0, error="ValueError: boom")
    assert recorder.named("claimed", "started", "finished", "settled") == [
        ("claimed", "jobs", "g", job.id, 1),
        ("started", job.id, 1),
        ("finished", job.id, retried, "ValueError"),
        ("settled", job.id, RETRIED),
        ("claimed", "jobs", "g", job.id, 2),
        ("started", job.id, 2),
        ("finished", job.id, Outcome(ACKED), None),
        ("settled", job.id, ACKED),
    ]


async def test_a_dead_lettered_event(make: Any) -> None:
    recorder = Recorder()
    broker = await make(recorder, max_attempts=1)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        raise ValueError("boom")

    await broker.subscribe("jobs")
    job = Job(n=1)
    await broker.publish(job)
    assert await broker.pick()
    assert recorder.named("claimed", "started", "finished", "settled") == [
        ("claimed", "jobs", "g", job.id, 1),
        ("started", job.id, 1),
        ("finished", job.id, Outcome(DEAD, error="ValueError: boom"), "ValueError"),
        ("settled", job.id, DEAD),
    ]
    assert [d.event_id for d in await broker.dead_letters("jobs")] == [job.id]


class RenewalsRefused:
    """A transport whose every lease renewal is refused, as after a lost lease."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def extend(self, receipts: Sequence[Receipt], seconds: float) -> list[bool]:
        return [False] * len(receipts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("handler_raises", [False, True])
async def test_a_lost_lease(broker_url: str, make: Any, handler_raises: bool) -> None:
    recorder = Recorder()
    transport = cast(Transport, RenewalsRefused(make_transport(broker_url)))
    options = BrokerOptions(url=broker_url, group="g", lease=0.3, retry=NO_WAIT)
    worker = Broker(transport, options, plugins=[recorder])
    thief = await make(lease=0.3)
    taken: list[str] = []

    @thief.on(Job)
    async def steal(event: Job) -> None:
        taken.append(event.id)

    @worker.on(Job)
    async def handle(event: Job, delivery: Delivery[Job]) -> None:
        await _until(lambda: delivery.lease_lost)
        # Once the store's lease ran out too, another consumer takes the event.
        async with asyncio.timeout(5):
            while not await thief.pick():
                await asyncio.sleep(0.05)
        if handler_raises:
            raise ValueError("too late")

    async with worker:
        await worker.subscribe("jobs")
        job = Job(n=1)
        await worker.publish(job)
        assert await worker.pick()
    assert taken == [job.id]
    if handler_raises:
        after = [
            ("finished", job.id, Outcome(LEASE_LOST, error="ValueError: too late"), "ValueError")
        ]
    else:
        # The handler returned: its ack went out, and the store refused it.
        after = [("finished", job.id, Outcome(ACKED), None), ("settled", job.id, LEASE_LOST)]
    assert recorder.named("claimed", "started", "finished", "settled") == [
        ("claimed", "jobs", "g", job.id, 1),
        ("started", job.id, 1),
        *after,
    ]


async def test_a_handler_cut_short_by_the_shutdown_is_released(make: Any) -> None:
    recorder = Recorder()
    broker = await make(recorder, shutdown_grace=0.05)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        await asyncio.sleep(10)

    await broker.subscribe("jobs")
    job = Job(n=1)
    await broker.publish(job)
    await _run_until(broker, lambda: bool(recorder.named("started")))
    assert recorder.named("claimed", "started", "finished", "settled", "consumer_stopped") == [
        ("claimed", "jobs", "g", job.id, 1),
        ("started", job.id, 1),
        ("finished", job.id, Outcome(RELEASED), "CancelledError"),
        ("consumer_stopped", "g", ("jobs",)),
    ]
    [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased) == (1, 0)


async def test_publish_and_publish_many_are_reported_per_topic_call(make: Any) -> None:
    recorder = Recorder()
    publisher = await make(recorder, group=None)
    subscriber = await make()
    await subscriber.subscribe("jobs", "chores")
    first, second, chore = Job(n=1), Job(n=2), Chore()
    assert await publisher.publish(first) == 1
    assert await publisher.publish(first) == 0  # a duplicate: the hooks are told 0 copies
    assert await publisher.publish_many([second, chore]) == 2
    assert recorder.calls[:4] == [
        ("publish_before", "jobs", [first.id]),
        ("publish_after", "jobs", [first.id], 1, None),
        ("publish_before", "jobs", [first.id]),
        ("publish_after", "jobs", [first.id], 0, None),
    ]
    # The topics of one publish_many go concurrently: each is told before, then after.
    many = recorder.calls[4:]
    assert sorted(many, key=str) == sorted(
        [
            ("publish_before", "jobs", [second.id]),
            ("publish_after", "jobs", [second.id], 1, None),
            ("publish_before", "chores", [chore.id]),
            ("publish_after", "chores", [chore.id], 1, None),
        ],
        key=str,
    )
    for topic in ("jobs", "chores"):
        assert [c[0] for c in many if c[1] == topic] == ["publish_before", "publish_after"]


class Stamps:
    """A plugin that adds a header naming the topic, key and event to every event published."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    @hookimpl
    def broker_publish_headers(self, topic: str, event: Event, key: str | None) -> dict[str, str]:
        self.seen.append((topic, event.id, key))
        return {"stamp": f"{topic}/{event.id}", "origin": "stamps"}


class Keyed(Event):
    topic: ClassVar[str] = "jobs"
    key_field: ClassVar[str | None] = "account"
    account: str


async def test_headers_a_plugin_adds_travel_with_the_published_events(make: Any) -> None:
    stamps, recorder = Stamps(), Recorder()
    publisher = await make(stamps, recorder, group=None)
    consumer = await make()
    received: list[dict[str, str]] = []

    @consumer.on("jobs")
    @consumer.on("chores")
    async def handle(event: Event) -> None:
        received.append(event.headers)

    await consumer.subscribe("jobs", "chores")
    job = Job(n=1, headers={"origin": "caller", "mine": "kept"})
    keyed, chore = Keyed(account="a-1"), Chore()
    await publisher.publish(job)
    await publisher.publish_many([keyed, chore])
    assert job.headers == {"origin": "caller", "mine": "kept"}  # the caller's is unchanged
    assert stamps.seen == [
        ("jobs", job.id, None),
        ("jobs", keyed.id, "a-1"),
        ("chores", chore.id, None),
    ]
    for _ in range(3):
        assert await consumer.pick()
    assert sorted(received, key=lambda h: h["stamp"]) == sorted(
        [
            # The plugin's header replaces the event's own of the same name.
            {"origin": "stamps", "mine": "kept", "stamp": f"jobs/{job.id}"},
            {"origin": "stamps", "stamp": f"jobs/{keyed.id}"},
            {"origin": "stamps", "stamp": f"chores/{chore.id}"},
        ],
        key=lambda h: h["stamp"],
    )
    # The publish hooks see the events as they were sent.
    told = [e for call in recorder.named("publish_before") for e in call[2]]
    assert sorted(told) == sorted([job.id, keyed.id, chore.id])


class Headers:
    """A plugin returning ``headers`` from broker_publish_headers, which may be wrong."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers

    @hookimpl
    def broker_publish_headers(self) -> Any:
        if isinstance(self.headers, Exception):
            raise self.headers
        return self.headers


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        (RuntimeError("headers"), "broker_publish_headers of plugin"),
        ({"n": 1}, "returned dict, not a mapping of strings to strings"),
        (["a", "b"], "returned list, not a mapping of strings to strings"),
    ],
)
async def test_a_raising_or_wrong_headers_hook_is_dropped_loudly(
    make: Any, caplog: pytest.LogCaptureFixture, bad: Any, complaint: str
) -> None:
    caplog.set_level(logging.ERROR, logger="broker.hooks")
    # Registered last, the bad plugin is called first: the good one's header still goes.
    broker = await make(Headers({"good": "yes"}), Headers(bad))
    received: list[dict[str, str]] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        received.append(event.headers)

    await broker.subscribe("jobs")
    assert await broker.publish(Job(n=1)) == 1
    assert await broker.pick()
    assert received == [{"good": "yes"}]
    assert complaint in caplog.text


async def test_a_headers_hook_returning_none_adds_nothing(make: Any) -> None:
    broker = await make(Headers(None))
    received: list[dict[str, str]] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        received.append(event.headers)

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1, headers={"mine": "kept"}))
    assert await broker.pick()
    assert received == [{"mine": "kept"}]


class PublishFails:
    """A transport whose publish fails as an outage would."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def publish(self, *args: Any, **kwargs: Any) -> int:
        raise TransportError("store unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_failed_publish_is_reported_with_its_error(broker_url: str) -> None:
    recorder = Recorder()
    transport = cast(Transport, PublishFails(make_transport(broker_url)))
    broker = Broker(transport, plugins=[recorder])
    job = Job(n=1)
    async with broker:
        with pytest.raises(TransportError):
            await broker.publish(job)
    [before, (name, topic, ids, copies, error)] = recorder.calls
    assert before == ("publish_before", "jobs", [job.id])
    assert (name, topic, ids, copies) == ("publish_after", "jobs", [job.id], None)
    assert isinstance(error, TransportError)


async def test_explicit_plugins_apply_to_their_broker_only(make: Any) -> None:
    mine, everyones = Recorder(), Recorder()
    plugin_manager().register(everyones)
    try:
        with_plugin, without = await make(mine), await make()
    finally:
        plugin_manager().unregister(everyones)
    handled: list[int] = []

    @without.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    await without.subscribe("jobs")
    await without.publish(Job(n=1))
    assert await without.pick()
    assert handled == [1]
    assert mine.calls == []
    # An entry-point plugin (in the shared manager) applies to every broker.
    assert [c[0] for c in everyones.calls] == [
        "publish_before",
        "publish_after",
        "claimed",
        "started",
        "finished",
        "settled",
    ]
    await with_plugin.publish(Job(n=2))
    assert [c[0] for c in mine.calls] == ["publish_before", "publish_after"]
    assert len(everyones.calls) == 8


async def test_a_plugin_given_twice_is_called_once(make: Any) -> None:
    recorder = Recorder()
    broker = await make(recorder, recorder)
    await broker.publish(Job(n=1))
    assert [c[0] for c in recorder.calls] == ["publish_before", "publish_after"]


class LocalTransport:
    """A plugin serving ``local://`` URLs, given to one broker only."""

    @hookimpl
    def broker_make_transport(self, url: str) -> Transport | None:
        return MemoryTransport() if url.startswith("local://") else None


def test_an_explicit_plugin_may_provide_the_transport() -> None:
    broker = Broker.from_url("local://", plugins=[LocalTransport()])
    assert isinstance(broker.transport, MemoryTransport)
    with pytest.raises(UnknownTransport):
        Broker.from_url("local://")


async def test_a_raising_hook_breaks_nothing(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="broker.hooks")
    recorder = Recorder()
    # Registered last, Raising is called first: the recorder must still be called.
    broker = await make(recorder, Raising())
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)

    await broker.subscribe("jobs")
    assert await broker.publish_many([Job(n=1), Job(n=2)]) == 2
    await _run_until(broker, lambda: len(recorder.named("settled")) == 2)
    assert sorted(handled) == [1, 2]
    [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)
    assert [c[0] for c in recorder.calls].count("finished") == 2
    assert recorder.calls[-1][0] == "consumer_stopped"
    failed = {r.getMessage() for r in caplog.records if r.exc_info is not None}
    plugin = f"{Raising.__module__}.Raising"
    for hook in (
        "publish_before",
        "publish_after",
        "consumer_started",
        "delivery_claimed",
        "handler_started",
        "handler_finished",
        "delivery_settled",
        "consumer_stopped",
    ):
        assert f"lifecycle hook broker_{hook} of plugin {plugin} failed; the broker goes on" in (
            failed
        )


class AsyncRecorder:
    """Async implementations of every hook that may be async; each yields to the loop."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def _record(self, name: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(name)

    @hookimpl
    async def broker_publish_before(self) -> None:
        await self._record("publish_before")

    @hookimpl
    async def broker_publish_after(self) -> None:
        await self._record("publish_after")

    @hookimpl
    async def broker_consumer_started(self) -> None:
        await self._record("consumer_started")

    @hookimpl
    async def broker_delivery_claimed(self) -> None:
        await self._record("claimed")

    @hookimpl
    async def broker_handler_started(self) -> None:
        await self._record("started")

    @hookimpl
    async def broker_consumer_stopped(self) -> None:
        await self._record("consumer_stopped")


async def test_async_hook_implementations_are_awaited(make: Any) -> None:
    recorder = AsyncRecorder()
    broker = await make(recorder)
    seen: list[list[str]] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        seen.append(list(recorder.calls))

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    assert recorder.calls == ["publish_before", "publish_after"]
    await _run_until(broker, lambda: bool(seen))
    assert seen == [["publish_before", "publish_after", "consumer_started", "claimed", "started"]]
    assert recorder.calls[-1] == "consumer_stopped"


class SlowStart:
    """An async handler_started hook that waits, for event 0, until event 1 was handled."""

    def __init__(self) -> None:
        self.second_handled = asyncio.Event()

    @hookimpl
    async def broker_handler_started(self, delivery: Delivery[Job]) -> None:
        if delivery.event.n == 0:
            await self.second_handled.wait()


async def test_a_slow_async_hook_delays_only_its_own_delivery(make: Any) -> None:
    slow = SlowStart()
    broker = await make(slow, concurrency=2)
    handled: list[int] = []

    @broker.on(Job)
    async def handle(event: Job) -> None:
        handled.append(event.n)
        if event.n == 1:
            slow.second_handled.set()

    await broker.subscribe("jobs")
    await broker.publish_many([Job(n=0), Job(n=1)])
    await _run_until(broker, lambda: len(handled) == 2)
    assert handled == [1, 0]


class AsyncSettled:
    @hookimpl
    async def broker_delivery_settled(self) -> None:
        pass


class AsyncHeaders:
    @hookimpl
    async def broker_publish_headers(self) -> None:
        pass


class WrapsFinished:
    @hookimpl(wrapper=True)
    def broker_handler_finished(self) -> Any:
        return (yield)


@pytest.mark.parametrize(
    ("plugin", "complaint"),
    [
        (AsyncSettled(), "implements broker_delivery_settled as a coroutine function"),
        (AsyncHeaders(), "implements broker_publish_headers as a coroutine function"),
        (WrapsFinished(), "implements the lifecycle hook broker_handler_finished as a wrapper"),
    ],
)
def test_a_hook_that_cannot_be_called_where_it_is_is_refused_at_construction(
    plugin: object, complaint: str
) -> None:
    with pytest.raises(TypeError, match=complaint) as refused:
        Broker.from_url("memory://", plugins=[plugin])
    assert type(plugin).__qualname__ in str(refused.value)


class SettledReturnsCoroutine:
    """A plain function that hands back a coroutine where nothing may be awaited."""

    def __init__(self) -> None:
        self.awaited = False

    async def _later(self) -> None:
        self.awaited = True

    @hookimpl
    def broker_delivery_settled(self) -> Any:
        return self._later()


async def test_an_awaitable_returned_where_nothing_is_awaited_is_dropped_loudly(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="broker.hooks")
    plugin = SettledReturnsCoroutine()
    broker = await make(plugin)

    @broker.on(Job)
    async def handle(event: Job) -> None:
        pass

    await broker.subscribe("jobs")
    await broker.publish(Job(n=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited would warn
        assert await broker.pick()
        gc.collect()
    [stats] = await broker.stats("jobs")
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)
    assert not plugin.awaited
    assert "broker_delivery_settled of plugin" in caplog.text
    assert "returned an awaitable, which is never awaited" in caplog.text
