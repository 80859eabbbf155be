"""The conformance suite and the state machine on MemoryTransport, plus memory specifics."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest

from broker_core.clock import ManualClock
from broker_core.errors import UnknownTransport
from broker_core.plugins import installed_transports, make_transport
from broker_core.testing import TransportConformance, TransportFactory
from broker_core.transport import Transport
from broker_memory import MemoryStore, MemoryTransport, forget_store, named_store
from broker_memory import plugin as memory_plugin


class TestMemoryConformance(TransportConformance):
    """Every conformance test, and the state machine, on a fresh private store per test."""

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        return lambda clock: MemoryTransport(clock=clock)


@pytest.fixture
def store_name() -> Iterator[str]:
    """A process-wide store name unique to the test, forgotten afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    yield name
    forget_store(name)


def _memory(url: str, **options: object) -> MemoryTransport:
    transport = make_transport(url, options)
    assert isinstance(transport, MemoryTransport)
    return transport


# -- stores and the plugin ------------------------------------------------------------


def test_memory_transport_is_a_transport() -> None:
    assert isinstance(MemoryTransport(), Transport)
    assert MemoryTransport().max_body_bytes is None


@pytest.mark.asyncio
async def test_named_store_is_shared_by_every_transport_of_the_url(store_name: str) -> None:
    a, b = _memory(f"memory://{store_name}"), _memory(f"memory://{store_name}")
    assert a.store is b.store is named_store(store_name)
    await a.subscribe("orders", "billing")
    assert await b.publish("orders", [("e1", b"x")]) == 1
    [m] = await b.claim("billing", ["orders"], max_count=1, lease=5, max_attempts=3)
    assert await a.ack([m.receipt]) == [True]


@pytest.mark.asyncio
async def test_differently_named_stores_are_isolated(store_name: str) -> None:
    other = f"{store_name}-other"
    try:
        a, b = _memory(f"memory://{store_name}"), _memory(f"memory://{other}")
        await a.subscribe("orders", "billing")
        assert await b.topics() == []
        assert await b.publish("orders", [("e1", b"x")]) == 0
    finally:
        forget_store(other)


def test_default_url_is_the_default_store() -> None:
    try:
        a, b = _memory("memory://"), _memory("memory://")
        assert a.store is b.store is named_store()
        assert a.store is not named_store("other-than-default")
    finally:
        forget_store()
        forget_store("other-than-default")


def test_clock_option_applies_to_a_new_store(store_name: str) -> None:
    clock = ManualClock()
    assert _memory(f"memory://{store_name}", clock=clock).store.clock is clock
    assert _memory(f"memory://{store_name}", clock=clock).store.clock is clock
    with pytest.raises(ValueError, match="another clock"):
        make_transport(f"memory://{store_name}", {"clock": ManualClock()})


def test_store_option_overrides_the_url() -> None:
    store = MemoryStore(ManualClock())
    assert _memory("memory://whatever", store=store).store is store


def test_transport_rejects_a_clock_other_than_its_stores() -> None:
    store = MemoryStore(ManualClock())
    assert MemoryTransport(store=store, clock=store.clock).store is store
    with pytest.raises(ValueError):
        MemoryTransport(store=store, clock=ManualClock())


def test_private_stores_are_fresh() -> None:
    assert MemoryTransport().store is not MemoryTransport().store


def test_plugin_serves_only_memory_urls() -> None:
    assert memory_plugin.broker_make_transport("redis://localhost:6379/0", {}) is None
    info = memory_plugin.broker_transport_info()
    assert (info.name, info.schemes) == ("memory", ("memory",))
    assert info in installed_transports()


def test_unknown_scheme_lists_installed_schemes() -> None:
    with pytest.raises(UnknownTransport, match="nope") as excinfo:
        make_transport("nope://somewhere")
    assert "memory://" in str(excinfo.value)


# -- wait() against a real clock and across loops ----------------------------------------


@pytest.mark.asyncio
async def test_wait_does_not_sleep_past_a_lease_expiry() -> None:
    transport = MemoryTransport()  # the monotonic clock: real expiry
    await transport.subscribe("orders", "billing")
    await transport.publish("orders", [("e1", b"x")])
    await transport.claim("billing", ["orders"], max_count=1, lease=0.05, max_attempts=3)
    assert await asyncio.wait_for(transport.wait("billing", ["orders"], 10.0), 2.0) is True
    [m] = await transport.claim("billing", ["orders"], max_count=1, lease=5, max_attempts=3)
    assert m.attempt == 2


@pytest.mark.asyncio
async def test_wait_wakes_earlier_when_a_retry_falls_due_sooner() -> None:
    transport = MemoryTransport()
    await transport.subscribe("orders", "billing")
    await transport.publish("orders", [("e1", b"x")])
    [m] = await transport.claim("billing", ["orders"], max_count=1, lease=30, max_attempts=3)
    waiter = asyncio.create_task(transport.wait("billing", ["orders"], 10.0))
    await asyncio.sleep(0.02)  # planned to sleep until the 30 s lease ends (capped at 10 s)
    assert await transport.nack(m.receipt, delay=0.05)
    assert await asyncio.wait_for(waiter, 2.0) is True
    assert len(await transport.claim("billing", ["orders"], max_count=1, lease=5, max_attempts=3))


@pytest.mark.asyncio
async def test_publish_wakes_a_waiter_on_another_threads_loop() -> None:
    transport = MemoryTransport()
    await transport.subscribe("orders", "billing")
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(transport.wait("billing", ["orders"], 5.0)))
    )
    thread.start()
    await asyncio.sleep(0.05)
    await transport.publish("orders", [("e1", b"x")])
    await asyncio.to_thread(thread.join, 2.0)
    assert result == [True]


@pytest.mark.asyncio
async def test_wait_leaves_no_waiter_behind() -> None:
    transport = MemoryTransport()
    await transport.subscribe("orders", "billing")
    assert await transport.wait("billing", ["orders"], 0.01) is False
    waiter = asyncio.create_task(transport.wait("billing", ["orders"], 5.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not any(transport.store._waiters.values())


# -- bounded memory ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_acked_leases_do_not_pile_up_in_the_expiry_heap() -> None:
    clock = ManualClock()
    transport = MemoryTransport(clock=clock)
    await transport.subscribe("orders", "billing")
    for round_ in range(20):
        await transport.publish("orders", [(f"{round_}-{i}", b"x") for i in range(100)])
        ms = await transport.claim("billing", ["orders"], max_count=100, lease=60, max_attempts=3)
        assert await transport.ack([m.receipt for m in ms]) == [True] * 100
    queue = transport.store._topics["orders"].groups["billing"]
    assert len(queue.lease_heap) <= 300
    assert not queue.copies and not transport.store._topics["orders"].held


def test_ended_dedup_windows_are_forgotten_whatever_windows_came_before() -> None:
    # Publishers may use different windows: one long window must not keep every later,
    # shorter one from being forgotten.
    clock = ManualClock()
    store = MemoryStore(clock)
    store.subscribe("orders", "billing")
    store.publish("orders", [("long", b"x")], dedup_window=10_000)
    for n in range(200):
        store.publish("orders", [(f"short{n}", b"x")], dedup_window=1)
        clock.advance(2)
    assert len(store._topics["orders"].published) <= 2
