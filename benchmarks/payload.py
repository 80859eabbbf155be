"""The one payload every scenario moves: a typed event with a ~100-byte JSON body."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from broker_core import Event
from broker_core.codec import encode

__all__ = [
    "ORDERING_KEYS",
    "TOPIC",
    "BenchEvent",
    "KeyedBenchEvent",
    "bodies",
    "data_of",
    "make_events",
    "make_keyed_events",
    "sizes",
]

ORDERING_KEYS = 100
"""Customers of the ordered drain: each one's events are handled one at a time."""

TOPIC = "bench.orders"


class BenchEvent(Event):
    """An order event whose ``data`` object is about 100 bytes of JSON."""

    topic: ClassVar[str] = TOPIC
    event_type: ClassVar[str] = "BenchOrderPlaced"

    order_id: str
    customer: str
    amount: float
    currency: str
    items: int
    note: str


def data_of(i: int) -> dict[str, Any]:
    """The fields of event number ``i`` (the same dict Dramatiq's actor receives)."""
    return {
        "order_id": f"ord-{i:06d}",
        "customer": f"cust-{i % 9973:05d}",
        "amount": round(10 + (i % 1000) * 1.25, 2),
        "currency": "EUR",
        "items": 1 + i % 7,
        "note": "express",
    }


def make_events(n: int, start: int = 0) -> list[BenchEvent]:
    """``n`` events, built before any clock starts (building them is the caller's cost)."""
    return [BenchEvent(**data_of(i)) for i in range(start, start + n)]


class KeyedBenchEvent(BenchEvent):
    """The same order event, ordered by customer (its ordering key)."""

    event_type: ClassVar[str] = "BenchOrderPlacedKeyed"
    key_field: ClassVar[str | None] = "customer"


def make_keyed_events(n: int, start: int = 0) -> list[BenchEvent]:
    """``n`` events spread over :data:`ORDERING_KEYS` customers, in turn."""
    return [
        KeyedBenchEvent(**{**data_of(i), "customer": f"cust-{i % ORDERING_KEYS:05d}"})
        for i in range(start, start + n)
    ]


def bodies(events: list[BenchEvent]) -> list[bytes]:
    """The encoded envelopes of ``events``: what the raw redis-py baseline pushes."""
    return [encode(e, TOPIC) for e in events]


def sizes() -> dict[str, int]:
    """Bytes of one event's ``data`` JSON and of its whole envelope."""
    event = make_events(1)[0]
    data = json.dumps(event.payload(), separators=(",", ":")).encode()
    return {"data_bytes": len(data), "envelope_bytes": len(encode(event, TOPIC))}
