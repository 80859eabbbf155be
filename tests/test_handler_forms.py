"""Every form a handler can take is run to completion before its event is acked.

A decorated async function, an object with ``async def __call__`` and a plain function
returning an awaitable all look like plain functions to ``iscoroutinefunction``; if
their coroutine were left unawaited, the event would be acked with its work never done.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest

from broker_core import Broker, Delivery, Event, RetryPolicy

NO_WAIT = RetryPolicy(max_attempts=2, initial_delay=0, max_delay=0, jitter=0)


class Job(Event):
    topic: ClassVar[str] = "jobs"
    n: int


def logged(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The usual logging decorator: a plain wrapper returning the async function's call."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Awaitable[Any]:
        return fn(*args)

    return wrapper


def handlers(done: list[str], loop_thread: int) -> dict[str, Any]:
    """One handler of each form; each records that its body ran on the event loop."""

    @logged
    async def decorated(event: Job, delivery: Delivery[Job]) -> None:
        await asyncio.sleep(0)
        assert threading.get_ident() == loop_thread
        done.append(f"decorated:{delivery.attempt}")

    class Callable_:
        async def __call__(self, event: Job) -> None:
            await asyncio.sleep(0)
            done.append("callable")

    async def work() -> None:
        await asyncio.sleep(0)
        done.append("returned awaitable")

    def returns_awaitable(event: Job) -> Awaitable[None]:
        return work()

    return {
        "decorated": decorated,
        "async __call__": Callable_(),
        "plain returning awaitable": returns_awaitable,
    }


@pytest.mark.parametrize("form", ["decorated", "async __call__", "plain returning awaitable"])
async def test_handler_work_runs_before_the_ack(broker_url: str, form: str) -> None:
    done: list[str] = []
    broker = Broker.from_url(broker_url, group="g", retry=NO_WAIT)
    broker.on(Job)(handlers(done, threading.get_ident())[form])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        async with broker:
            await broker.subscribe("jobs")
            await broker.publish(Job(n=1))
            assert await broker.pick()
            [stats] = await broker.stats("jobs")
    assert len(done) == 1, f"{form}: the handler's work did not run ({done})"
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)


async def test_a_decorated_handler_that_fails_is_retried(broker_url: str) -> None:
    attempts: list[int] = []
    broker = Broker.from_url(broker_url, group="g", retry=NO_WAIT)

    @broker.on(Job)
    @logged
    async def flaky(event: Job, delivery: Delivery[Job]) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise ValueError("first time fails")

    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=1))
        assert await broker.pick()
        async with asyncio.timeout(5):
            while not await broker.pick():
                await asyncio.sleep(0.01)
    assert attempts == [1, 2]


async def test_a_blocking_wrapper_of_an_async_function_runs_in_a_thread(broker_url: str) -> None:
    # A wrapper that keeps the async function's identity but drives it itself, blocking
    # (asyncio.run): it must not be called on the event loop.
    done: list[int] = []
    broker = Broker.from_url(broker_url, group="g", retry=NO_WAIT)

    async def work(event: Job) -> None:
        done.append(event.n)

    @functools.wraps(work)
    def blocking(event: Job) -> None:
        asyncio.run(work(event))

    broker.on(Job)(blocking)
    async with broker:
        await broker.subscribe("jobs")
        await broker.publish(Job(n=7))
        assert await broker.pick()
        assert await broker.dead_letters("jobs") == []
    assert done == [7]
