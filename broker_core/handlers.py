"""Handler registration and routing: which function handles which event."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker_core.delivery import Delivery
from broker_core.events import Event
from broker_core.retry import RetryPolicy

__all__ = ["Handler", "Route", "Router"]

Handler = Callable[..., Any]
"""``f(event)`` or ``f(event, delivery)``, a coroutine function or a plain function."""


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler and what it handles."""

    topic: str
    event_type: type[Event] | None
    """The event class handled, or None for every event of the topic."""
    func: Handler
    retry: RetryPolicy
    invoke: Callable[[Event, Delivery[Any]], Awaitable[Any]]
    """Calls ``func`` with the arguments it takes; plain functions run in a thread."""

    @classmethod
    def build(
        cls, topic: str, event_type: type[Event] | None, func: Handler, retry: RetryPolicy
    ) -> Route:
        """Check ``func``'s signature and prepare how to call it."""
        if not callable(func):
            raise TypeError(f"handler must be callable, got {func!r}")
        pass_delivery = _takes_delivery(func)
        invoke: Callable[[Event, Delivery[Any]], Awaitable[Any]]
        if inspect.iscoroutinefunction(func):
            # Its call is the coroutine to await: no wrapper coroutine per event.
            invoke = func if pass_delivery else lambda event, delivery: func(event)
        elif _is_async(func):

            async def invoke(event: Event, delivery: Delivery[Any]) -> Any:
                result = func(event, delivery) if pass_delivery else func(event)
                return await result if inspect.isawaitable(result) else result

        else:

            async def invoke(event: Event, delivery: Delivery[Any]) -> Any:
                # A plain function may block; a worker thread keeps the event loop (and
                # with it lease renewal of every other delivery) running meanwhile.
                call = (
                    functools.partial(func, event, delivery)
                    if pass_delivery
                    else functools.partial(func, event)
                )
                result = await _uninterruptible(asyncio.ensure_future(asyncio.to_thread(call)))
                # A plain function may still hand back work to do (a decorator that
                # returns its async function's coroutine): it runs on the loop, or the
                # event would be acked with its work never done.
                return await result if inspect.isawaitable(result) else result

        return cls(topic, event_type, func, retry, invoke)


async def _uninterruptible(thread: asyncio.Future[Any]) -> Any:
    """The thread's result, even if the awaiting task is cancelled meanwhile.

    A thread cannot be interrupted. Were its task cancelled and its event given back,
    another consumer would run the event while this thread still does; so the task waits
    for the thread, keeping its lease renewed, and settles the outcome as usual.
    """
    while True:
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            if thread.cancelled():
                raise  # the loop itself is shutting down
            # Also when the thread has just finished: its outcome is settled as usual.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


def _is_async(func: Handler) -> bool:
    """Whether ``func`` is called on the event loop: a coroutine function, or an object
    with ``async def __call__`` (which ``iscoroutinefunction`` misses).

    Any other callable, a ``functools.wraps`` wrapper of an async function included, runs
    in a worker thread, since its own code may block; the coroutine it may return is then
    awaited on the loop.
    """
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _takes_delivery(func: Handler) -> bool:
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params) or len(positional) >= 2:
        return True
    if len(positional) == 1:
        return False
    raise TypeError(f"handler {func!r} must take (event) or (event, delivery)")


class Router:
    """The handlers of one broker, by topic and event type."""

    def __init__(self) -> None:
        self._by_type: dict[tuple[str, str], Route] = {}
        # The same routes by topic, then type name: route() builds no tuple per event.
        self._by_topic_type: dict[str, dict[str, Route]] = {}
        self._by_topic: dict[str, Route] = {}
        self._types: dict[str, type[Event]] = {}

    def add(self, route: Route) -> None:
        """Register ``route``; a second handler for the same topic and type is an error."""
        if route.event_type is None:
            if route.topic in self._by_topic:
                raise ValueError(f"topic {route.topic!r} already has a handler for every event")
            self._by_topic[route.topic] = route
            return
        key = (route.topic, route.event_type.event_type)
        if key in self._by_type:
            raise ValueError(f"{key[1]} on topic {route.topic!r} already has a handler")
        self._by_type[key] = route
        self._by_topic_type.setdefault(route.topic, {})[key[1]] = route
        self._types[route.event_type.event_type] = route.event_type

    def route(self, topic: str, event: Event) -> Route | None:
        """The handler for ``event`` on ``topic``: its type's, else the topic's, else None."""
        by_type = self._by_topic_type.get(topic)
        found = by_type.get(event.type_name) if by_type is not None else None
        return found or self._by_topic.get(topic)

    @property
    def types(self) -> Mapping[str, type[Event]]:
        """The event classes handlers asked for, by wire type name (used for decoding)."""
        return self._types

    def topics(self) -> list[str]:
        """Every topic with at least one handler, sorted."""
        return sorted({topic for topic, _ in self._by_type} | set(self._by_topic))

    def max_attempts(self, topics: Iterable[str]) -> int:
        """The largest ``max_attempts`` among the handlers of ``topics``."""
        topics = set(topics)
        routes = [r for (t, _), r in self._by_type.items() if t in topics]
        routes += [r for t, r in self._by_topic.items() if t in topics]
        return max((r.retry.max_attempts for r in routes), default=1)
