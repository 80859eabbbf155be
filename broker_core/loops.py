"""The event loop the broker's own entry points run on: uvloop where installed.

``broker run`` and the other CLI commands, and :class:`~broker_core.sync.SyncBroker`'s
background loop, start their loop here. With the ``speed`` extra (``pip install
'embedded-event-broker[speed]'``) that is uvloop's; without it, or with the environment
variable ``BROKER_UVLOOP=0``, asyncio's own. An application that runs its own loop
(``asyncio.run``, a web framework) keeps it: installing uvloop changes nothing there.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["new_event_loop", "run", "uses_uvloop"]

T = TypeVar("T")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("BROKER_UVLOOP", "1") == "0":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def uses_uvloop() -> bool:
    """Whether :func:`run` and :func:`new_event_loop` give uvloop's loop."""
    return _loop_factory() is not None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's where installed (and not turned off), else asyncio's."""
    factory = _loop_factory()
    return asyncio.new_event_loop() if factory is None else factory()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop :func:`new_event_loop` would give."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
