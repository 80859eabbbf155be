"""The synchronous API: the Broker's publishing and operator calls for code without a loop.

A :class:`SyncBroker` runs an event loop of its own in one daemon thread and hands each
call to it, so a Flask or Django view, a script or a worker thread can publish without
``async``. It survives ``os.fork``: a forked child gets a fresh loop and a fresh
connection of its own on its first call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from broker_core import loops
from broker_core.broker import Broker
from broker_core.events import Event
from broker_core.settings import BrokerSettings
from broker_core.transport import DeadLetter, QueueStats, TopicStats

__all__ = ["SyncBroker"]

T = TypeVar("T")

_THREAD_NAME = "broker-sync-loop"


class SyncBroker:
    """A :class:`~broker_core.broker.Broker` for synchronous code, safe to share.

    Its methods are the Broker's publishing and operator calls, with the same arguments
    and results, without ``await``; each blocks its caller until the call is done and
    raises what the Broker raised. One object may be used from many threads at once,
    and from a child process after ``os.fork`` (a pre-forking server)::

        broker = SyncBroker.from_url("redis://localhost:6379/0")   # module level
        broker.publish(OrderPlaced(order_id="1", total=9.5))       # in any thread

    It connects on its first call, or on :meth:`connect` / entering ``with broker:``,
    and stays connected until :meth:`close` / leaving the ``with`` block; once closed,
    it refuses further calls. Every call takes an optional ``timeout`` in seconds: when
    it runs out, the call is cancelled and raises TimeoutError (a publish may have been
    stored by then; publishing the event again within the dedup window adds nothing).
    Without one, a call waits as long as the transport's own timeouts let it.

    Calling it from a thread that runs an event loop raises RuntimeError: it would block
    that loop. Async code uses :class:`~broker_core.broker.Broker` itself.
    """

    def __init__(self, make_broker: Callable[[], Broker]) -> None:
        """Wrap the broker ``make_broker`` builds; a forked child calls it again for its own.

        :meth:`from_url` and :meth:`from_settings` are the usual ways to build one.
        """
        self._make_broker = make_broker
        self._lock = threading.Lock()
        self._broker: Broker | None = make_broker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connecting = asyncio.Lock()
        self._connected = False
        self._closed = False
        # What a forked child inherited from its parent: its loop and its broker's
        # connections. Kept referenced so that no finalizer ever runs on them in the
        # child: closing a connection unregisters its socket from the loop's epoll
        # instance, which the parent shares, and would deafen the parent's loop to it.
        self._inherited: list[object] = []
        _live.add(self)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str = "memory://",
        *,
        transport_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SyncBroker:
        """A sync broker on ``url``; the arguments are those of :meth:`Broker.from_url`."""
        return cls(lambda: Broker.from_url(url, transport_options=transport_options, **options))

    @classmethod
    def from_settings(
        cls,
        settings: BrokerSettings | None = None,
        *,
        transport_options: Mapping[str, Any] | None = None,
    ) -> SyncBroker:
        """A sync broker configured from ``BROKER_*`` environment variables (or ``settings``)."""
        # Read once, here: a forked child keeps the parent's configuration.
        settings = settings or BrokerSettings()
        return cls(lambda: Broker.from_settings(settings, transport_options=transport_options))

    @property
    def broker(self) -> Broker:
        """The async Broker this one drives (a new one in a forked child).

        For its options and group. Its coroutines run on this object's own event loop:
        a Redis transport's connections belong to the loop that opened them, so do not
        await them on another loop while this object uses them.
        """
        with self._lock:
            return self._current_broker()

    def _current_broker(self) -> Broker:
        if self._broker is None:
            self._broker = self._make_broker()
        return self._broker

    # -- lifecycle -----------------------------------------------------------------------

    def connect(self, *, timeout: float | None = None) -> None:
        """Connect the transport now rather than on the first call; idempotent."""
        _refuse_inside_loop("connect")
        _wait(self._submit(self._ready), timeout)

    def close(self) -> None:
        """Let calls in progress finish, close the transport and stop the thread; idempotent."""
        _refuse_inside_loop("close")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, broker = self._loop, self._thread, self._broker
            if loop is None or thread is None or broker is None:
                return  # never started: nothing to close
            # Under the lock, so that no call can be handed to the loop after it.
            done = asyncio.run_coroutine_threadsafe(_shutdown(broker), loop)
        try:
            done.result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the Broker's calls --------------------------------------------------------------

    def publish(
        self,
        event: Event,
        *,
        topic: str | None = None,
        key: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`Broker.publish`: the number of groups ``event`` reached (0 for a duplicate)."""
        return self._call("publish", lambda b: b.publish(event, topic=topic, key=key), timeout)

    def publish_many(
        self,
        events: Iterable[Event],
        *,
        topic: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`Broker.publish_many`: the number of (event, group) copies enqueued."""
        # Iterated here, not on the loop's thread: a generator may read the caller's
        # thread-local state (a web framework's request context).
        batch = list(events)
        return self._call("publish_many", lambda b: b.publish_many(batch, topic=topic), timeout)

    def stats(self, topic: str | None = None, *, timeout: float | None = None) -> list[QueueStats]:
        """:meth:`Broker.stats`: per topic and group, ready, leased, delayed and dead counts."""
        return self._call("stats", lambda b: b.stats(topic), timeout)

    def topic_stats(
        self, topic: str | None = None, *, timeout: float | None = None
    ) -> list[TopicStats]:
        """:meth:`Broker.topic_stats`: per topic, its partitions, retention and history."""
        return self._call("topic_stats", lambda b: b.topic_stats(topic), timeout)

    def configure_topic(
        self,
        topic: str,
        *,
        max_age: timedelta | float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """See :meth:`Broker.configure_topic`."""
        return self._call(
            "configure_topic",
            lambda b: b.configure_topic(
                topic, max_age=max_age, max_events=max_events, partitions=partitions
            ),
            timeout,
        )

    def dead_letters(
        self,
        topic: str,
        *,
        group: str | None = None,
        limit: int = 100,
        offset: int = 0,
        timeout: float | None = None,
    ) -> list[DeadLetter]:
        """:meth:`Broker.dead_letters`: dead events of ``topic``, oldest first."""
        return self._call(
            "dead_letters",
            lambda b: b.dead_letters(topic, group=group, limit=limit, offset=offset),
            timeout,
        )

    def replay_dead(
        self,
        topic: str,
        event_ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`Broker.replay_dead`: give dead events another full set of attempts."""
        return self._call(
            "replay_dead", lambda b: b.replay_dead(topic, event_ids, group=group), timeout
        )

    def purge_dead(
        self,
        topic: str,
        event_ids: Sequence[str] | None = None,
        *,
        group: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """:meth:`Broker.purge_dead`: delete dead events for good."""
        return self._call(
            "purge_dead", lambda b: b.purge_dead(topic, event_ids, group=group), timeout
        )

    # -- running calls on the loop -------------------------------------------------------

    def _call(
        self,
        name: str,
        call: Callable[[Broker], Coroutine[Any, Any, T]],
        timeout: float | None,
    ) -> T:
        _refuse_inside_loop(name)

        async def connected_then_call(broker: Broker) -> T:
            return await call(await self._ready(broker))

        return _wait(self._submit(connected_then_call), timeout)

    def _submit(self, make: Callable[[Broker], Coroutine[Any, Any, T]]) -> Future[T]:
        """Hand ``make(broker)`` to the loop, starting it first if need be."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SyncBroker is closed")
            broker = self._current_broker()
            loop = self._loop or self._start()
            # The coroutine is made only once it is sure to run: no "never awaited" warning.
            return asyncio.run_coroutine_threadsafe(make(broker), loop)

    def _start(self) -> asyncio.AbstractEventLoop:
        """Start the loop's thread (called under the lock)."""
        loop = loops.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name=_THREAD_NAME, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        return loop

    async def _ready(self, broker: Broker) -> Broker:
        """``broker``, connected (on the loop)."""
        # Calls that arrive while the first one connects wait for it, and try again if
        # it failed.
        async with self._connecting:
            if not self._connected:
                await broker.connect()
                self._connected = True
        return broker

    def _forked(self) -> None:
        """In a forked child: the parent's loop thread is gone and its sockets are not ours."""
        # The parent may have held the lock at the fork; no other thread runs yet here.
        self._lock = threading.Lock()
        self._inherited.append((self._broker, self._loop))
        self._broker = None
        self._loop = self._thread = None
        self._connecting = asyncio.Lock()
        self._connected = False


_live: weakref.WeakSet[SyncBroker] = weakref.WeakSet()
"""Every SyncBroker of the process, for the fork hook."""


def _after_fork_in_child() -> None:
    for sync in list(_live):
        sync._forked()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _shutdown(broker: Broker) -> None:
    # Closing the transport under the calls handed over before close() would fail them.
    calls = asyncio.all_tasks() - {asyncio.current_task()}
    if calls:
        await asyncio.wait(calls)
    await broker.close()


def _refuse_inside_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"SyncBroker.{name}() was called from a thread running an event loop, which it "
        f"would block until the call is done: in async code use the async Broker, "
        f"`await broker.{name}(...)` on a Broker.from_url(...)"
    )


def _wait(future: Future[T], timeout: float | None) -> T:
    try:
        return future.result(timeout)
    except BaseException:
        # A timeout or a KeyboardInterrupt in the caller: the call must not go on unseen.
        future.cancel()
        raise
