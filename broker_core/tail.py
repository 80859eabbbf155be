"""``broker tail``: print a topic's events as they are published, disturbing no group.

The tail subscribes a group of its own, ``tail-<random>``, which receives every event
published to the topic from then on, as every group does; it claims, prints and acks
them, and unsubscribes when it stops, which drops whatever the group still held, so a
tail that exits leaves nothing of itself in the store. The groups of the services are
never read or changed. A tail killed outright (SIGKILL, a lost machine) cannot clean up:
its group, named when the tail starts, is removed by ``broker unsubscribe``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable

from pydantic import ValidationError

from broker_core.codec import Envelope
from broker_core.names import validate_topic
from broker_core.transport import Message, Transport

__all__ = ["TAIL_PREFIX", "describe", "tail", "tail_group"]

TAIL_PREFIX = "tail-"
"""The start of every tail's group name."""

_BODY_CHARS = 200
"""How much of an event's data a line shows."""

# A tail never handles anything: its own deliveries should never die of attempts.
_LEASE, _MAX_ATTEMPTS, _BATCH = 30.0, 1_000_000, 100


def tail_group() -> str:
    """A fresh group name for one tail."""
    return f"{TAIL_PREFIX}{secrets.token_hex(6)}"


def _printable(text: str, limit: int = _BODY_CHARS) -> str:
    """``text`` on one line, without control characters, cut at ``limit`` characters.

    A payload may hold terminal escape sequences; printed as they are, they could rewrite
    what the operator sees (or the terminal's title, or the clipboard).
    """
    out = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
    return out if len(out) <= limit else out[: limit - 1] + "…"


def describe(message: Message) -> str:
    """One line for an event: when, type, id, key, headers and the start of its data."""
    try:
        envelope = Envelope.model_validate_json(message.body)
    except ValidationError:
        body = message.body[:_BODY_CHARS].decode("utf-8", "backslashreplace")
        return _printable(f"{message.event_id} (not an event envelope) body={body}")
    parts = [envelope.occurred_at.isoformat(timespec="milliseconds"), envelope.type]
    parts.append(f"id={envelope.id}")
    if envelope.key is not None:
        parts.append(f"key={envelope.key}")
    if envelope.headers:
        parts.append(f"headers={json.dumps(envelope.headers, ensure_ascii=False)}")
    line = _printable(" ".join(parts), limit=1000)
    data = json.dumps(envelope.data, ensure_ascii=False, separators=(",", ":"))
    return f"{line} data={_printable(data)}"


async def tail(
    transport: Transport,
    topic: str,
    group: str,
    out: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Print each event of ``topic`` through ``out`` until ``stop`` is set, as ``group``.

    ``group`` must be the tail's own (see :func:`tail_group`): it is subscribed here and
    unsubscribed, with everything it still holds, however this ends.
    """
    topic = validate_topic(topic)
    try:
        await transport.subscribe(topic, group)
        while not stop.is_set():
            messages = await transport.claim(
                group, [topic], max_count=_BATCH, lease=_LEASE, max_attempts=_MAX_ATTEMPTS
            )
            for message in messages:
                out(describe(message))
            if messages:
                await transport.ack([m.receipt for m in messages])
                continue
            waiting = asyncio.ensure_future(transport.wait(group, [topic], 1.0))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiting, stopping):
                task.cancel()
            await asyncio.gather(waiting, stopping, return_exceptions=True)
    finally:
        # Shielded: a cancelled tail still removes its group.
        await asyncio.shield(transport.unsubscribe(topic, group))
