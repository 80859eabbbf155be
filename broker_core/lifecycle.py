"""Calling the lifecycle hooks: each implementation on its own, nothing when there is none.

A broker looks up the implementations of every lifecycle hook of
:mod:`broker_core.hooks` once, when it is built. A hook nobody implements is None in
its :class:`Lifecycle`, and the broker skips it with one ``is None`` test: no pluggy
call, no arguments built. The implementations of a hook are called in pluggy's order
(last registered first, ``tryfirst`` and ``trylast`` honoured), each on its own, so that
one that raises is logged, with its traceback and naming its plugin and hook, and
neither stops the others nor reaches the delivery or publish that called it.

The broker passes a hook's arguments positionally, in the order of its specification;
each implementation gets the ones it names, as pluggy would give them. (Positionally,
because binding them by keyword costs twice as much, on every event.)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from broker_core.events import Event

__all__ = ["AsyncHook", "HeadersHook", "Lifecycle", "SyncHook"]

log = logging.getLogger("broker.hooks")


@dataclass(frozen=True, slots=True)
class _Impl:
    """One implementation of a hook, with the arguments it takes (a subset of the spec's)."""

    hook: str
    plugin: str
    function: Callable[..., Any]
    positions: tuple[int, ...] | None
    """Where the arguments it takes are among the spec's; None if it takes them all."""

    def call(self, args: tuple[Any, ...]) -> Any:
        if self.positions is None:
            return self.function(*args)
        return self.function(*[args[i] for i in self.positions])

    def log_failure(self) -> None:
        log.error(
            "lifecycle hook %s of plugin %s failed; the broker goes on",
            self.hook,
            self.plugin,
            exc_info=True,
        )


def _plugin_name(plugin: object) -> str:
    """A module's name, or an object's class: pluggy's own names of objects are ids."""
    name = getattr(plugin, "__name__", None)
    if isinstance(name, str):
        return name
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def _impls(pm: pluggy.PluginManager, hook: str, may_await: bool) -> list[_Impl]:
    caller = getattr(pm.hook, hook)
    spec = tuple(caller.spec.argnames)
    found = []
    # pluggy keeps implementations in reverse call order.
    for impl in reversed(caller.get_hookimpls()):
        plugin = _plugin_name(impl.plugin)
        if impl.wrapper or impl.hookwrapper:
            raise TypeError(
                f"plugin {plugin} implements the lifecycle hook {hook} as a wrapper; "
                "lifecycle hooks are notifications: implement it as a plain hook"
            )
        if not may_await and inspect.iscoroutinefunction(impl.function):
            raise TypeError(
                f"plugin {plugin} implements {hook} as a coroutine function, but that hook "
                "is called without awaiting (docs/operations.md): make it a plain function"
            )
        # (pluggy checked at registration that it names only arguments of the spec.)
        positions = tuple(spec.index(name) for name in impl.argnames)
        takes_all = positions == tuple(range(len(spec)))
        found.append(_Impl(hook, plugin, impl.function, None if takes_all else positions))
    return found


class AsyncHook:
    """A lifecycle hook whose implementations may be async: awaited one after another."""

    __slots__ = ("_impls",)

    def __init__(self, impls: list[_Impl]) -> None:
        self._impls = impls

    async def __call__(self, *args: Any) -> None:
        """Call every implementation with the arguments it takes; await what it returns."""
        for impl in self._impls:
            try:
                result = impl.call(args)
                # (None first: the test is much cheaper than isawaitable, and plain
                # implementations return None.)
                if result is not None and inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the caller's task is being cancelled, not failed by the hook
                impl.log_failure()
            except Exception:
                impl.log_failure()


class SyncHook:
    """A lifecycle hook called where nothing may be awaited: plain functions only."""

    __slots__ = ("_impls",)

    def __init__(self, impls: list[_Impl]) -> None:
        self._impls = impls

    def __call__(self, *args: Any) -> None:
        """Call every implementation with the arguments it takes."""
        for impl in self._impls:
            try:
                result = impl.call(args)
            except Exception:
                impl.log_failure()
                continue
            if result is not None and inspect.isawaitable(result):
                # Not a coroutine function, yet it returned one (a decorator's wrapper):
                # nothing here may wait for it, so it is dropped, loudly.
                if inspect.iscoroutine(result):
                    result.close()
                log.error(
                    "lifecycle hook %s of plugin %s returned an awaitable, which is never "
                    "awaited at this hook (docs/operations.md)",
                    impl.hook,
                    impl.plugin,
                )


def _is_headers(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


class HeadersHook:
    """The hook whose implementations return headers to add to an event being published."""

    __slots__ = ("_impls",)

    def __init__(self, impls: list[_Impl]) -> None:
        self._impls = impls

    def __call__(self, topic: str, event: Event, key: str | None) -> Event:
        """``event``, or a copy of it with the headers the implementations returned."""
        added: dict[str, str] = {}
        args = (topic, event, key)
        for impl in self._impls:
            try:
                result = impl.call(args)
            except Exception:
                impl.log_failure()
                continue
            if result is None:
                continue
            if not _is_headers(result):
                # Anything else would be encoded as it is, and refused by every consumer.
                if inspect.iscoroutine(result):
                    result.close()
                log.error(
                    "lifecycle hook %s of plugin %s returned %s, not a mapping of strings "
                    "to strings; its headers are dropped",
                    impl.hook,
                    impl.plugin,
                    type(result).__name__,
                )
                continue
            added.update(result)
        if not added:
            return event
        # model_copy does not validate: the check above keeps the headers strings.
        return event.model_copy(update={"headers": {**event.headers, **added}})


def _async(pm: pluggy.PluginManager, hook: str) -> AsyncHook | None:
    impls = _impls(pm, hook, may_await=True)
    return AsyncHook(impls) if impls else None


def _sync(pm: pluggy.PluginManager, hook: str) -> SyncHook | None:
    impls = _impls(pm, hook, may_await=False)
    return SyncHook(impls) if impls else None


class Lifecycle:
    """The lifecycle hooks of one broker, each None when no plugin implements it.

    Call one with its specification's arguments, positionally and in their order:
    ``hooks.handler_finished(delivery, outcome, exception)``.

    Built once from the broker's plugin manager: a plugin registered with the manager
    afterwards is not seen by brokers that already exist. Raises TypeError for an
    implementation that cannot be called where its hook is (a wrapper, or a coroutine
    function of a hook that is not awaited), naming the plugin.
    """

    __slots__ = (
        "consumer_started",
        "consumer_stopped",
        "delivery_claimed",
        "delivery_settled",
        "handler_finished",
        "handler_started",
        "observes_publish",
        "publish_after",
        "publish_before",
        "publish_headers",
    )

    def __init__(self, pm: pluggy.PluginManager) -> None:
        impls = _impls(pm, "broker_publish_headers", may_await=False)
        self.publish_headers = HeadersHook(impls) if impls else None
        self.publish_before = _async(pm, "broker_publish_before")
        self.publish_after = _async(pm, "broker_publish_after")
        self.consumer_started = _async(pm, "broker_consumer_started")
        self.delivery_claimed = _async(pm, "broker_delivery_claimed")
        self.handler_started = _async(pm, "broker_handler_started")
        self.handler_finished = _sync(pm, "broker_handler_finished")
        self.delivery_settled = _sync(pm, "broker_delivery_settled")
        self.consumer_stopped = _async(pm, "broker_consumer_stopped")

        self.observes_publish = self.publish_before is not None or self.publish_after is not None
        """Whether a publish hook has an implementation (tested on every publish)."""
