"""Ending a background task for sure, even where a library loses its cancellation.

On CPython 3.11, ``asyncio.wait_for`` returns the result of what it waits for when that
finished in the same loop iteration as the cancellation came: the ``CancelledError`` is
lost, and the task goes on (fixed in 3.12, where ``wait_for`` is built on
``asyncio.timeout``). redis-py wraps the send of every command in ``wait_for`` when a
socket timeout is set, so a loop cancelled while it sends a command carries on for
good, and whoever awaits its end after one ``cancel()`` waits for ever: a dashboard that
would not stop on SIGTERM, a consumer whose lease renewal never ends.

:func:`cancel_and_wait` repeats the cancellation until the task ends. Plugins and
transports stop their own loops with it too. :func:`to_the_end` is its counterpart for
what must finish although its caller is cancelled again and again (the consumer's last
acks and give-backs).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["cancel_and_wait", "to_the_end"]

# How long a cancelled task may run on before it is cancelled again. Long enough for
# the cleanup a cancellation starts (a ``finally`` closing a connection, say), which a
# second cancellation would cut short.
_AGAIN_AFTER = 0.05


async def cancel_and_wait(task: asyncio.Future[Any], *, again_after: float = _AGAIN_AFTER) -> None:
    """Cancel ``task``, and return once it has ended, cancelling it again while it runs.

    It is cancelled again every ``again_after`` seconds: a task whose cleanup (what it
    does on its cancellation) may take longer needs a longer one, or that cleanup is cut
    short. A task that ends by an exception other than its cancellation raises it here,
    as awaiting it would. If the caller is cancelled meanwhile, ``task`` has been
    cancelled at least once, and the caller's cancellation propagates.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=again_after)
    if not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error


async def to_the_end(task: asyncio.Future[T]) -> T:
    """``await task``, but a cancellation of the caller meanwhile lets it finish first.

    For what a stop must complete even when it is cancelled again and again (by
    :func:`cancel_and_wait`, or an anyio cancel scope): the
    caller's cancellation is raised once ``task`` has ended. Only for what ends by itself:
    calls with a deadline (the transport's timeouts, the give-back's), or tasks cancelled
    until they end (a handler in a thread, which nothing can end, excepted).
    """
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
