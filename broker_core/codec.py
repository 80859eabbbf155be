"""The wire format: events to JSON envelopes and back (documented in docs/wire-format.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from broker_core.errors import BrokerError
from broker_core.events import Event, UnknownEvent, event_class

__all__ = ["FORMAT_VERSION", "DecodeError", "Envelope", "decode", "encode"]

FORMAT_VERSION = 1


class DecodeError(BrokerError, ValueError):
    """A stored body is not a valid envelope, or its data does not fit its event type."""


class Envelope(BaseModel):
    """The JSON object every event travels as."""

    model_config = ConfigDict(frozen=True)

    v: int
    id: str
    type: str
    topic: str
    occurred_at: AwareDatetime
    headers: dict[str, str]
    data: dict[str, Any]


# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(event: Event, topic: str) -> bytes:
    """Serialise ``event`` as published to ``topic``."""
    envelope = {
        "v": FORMAT_VERSION,
        "id": event.id,
        "type": event.type_name,
        "topic": topic,
        "occurred_at": event.occurred_at.isoformat(),
        "headers": event.headers,
        "data": event.payload(),
    }
    return _ENCODER.encode(envelope).encode()


def decode(body: bytes, types: Mapping[str, type[Event]] | None = None) -> Event:
    """Rebuild the event in ``body``.

    The class is looked up in ``types`` first, then among all defined Event subclasses;
    a type known to neither comes back as :class:`UnknownEvent`. Raises DecodeError,
    with the reason, for anything that is not a valid envelope of a supported version.
    """
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise DecodeError(f"not an event envelope: {_summary(exc)}") from exc
    if envelope.v != FORMAT_VERSION:
        raise DecodeError(f"unsupported envelope version {envelope.v} (expected {FORMAT_VERSION})")
    cls = (types or {}).get(envelope.type) or event_class(envelope.type)
    try:
        if cls is None or cls is UnknownEvent:
            return UnknownEvent(
                id=envelope.id,
                occurred_at=envelope.occurred_at,
                headers=envelope.headers,
                type=envelope.type,
                data=envelope.data,
            )
        return cls.model_validate(
            {
                **envelope.data,
                "id": envelope.id,
                "occurred_at": envelope.occurred_at,
                "headers": envelope.headers,
            }
        )
    except ValidationError as exc:
        raise DecodeError(f"data does not fit {envelope.type}: {_summary(exc)}") from exc


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
