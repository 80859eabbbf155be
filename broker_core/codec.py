"""The wire format: events to JSON envelopes and back (documented in docs/wire-format.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json

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
    occurred_at: datetime
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
    event = _decode_fast(body, types)
    if event is not None:
        return event
    return _decode_checked(body, types)


def _decode_fast(body: bytes, types: Mapping[str, type[Event]] | None) -> Event | None:
    """The common case in one JSON parse and one validation; None means "ask the slow path".

    It only answers when the body is a well-formed envelope of this version whose fields
    already have exactly the types :class:`Envelope` wants, and the event class validates
    it: then the result equals the slow path's. Everything else (malformed or coercible
    envelopes, other versions, validation errors) goes to :func:`_decode_checked`, which
    gives the documented errors.
    """
    try:
        raw = from_json(body)
    except (ValueError, TypeError):
        return None
    if type(raw) is not dict:
        return None
    v, event_id, type_name = raw.get("v"), raw.get("id"), raw.get("type")
    occurred_at, headers, data = raw.get("occurred_at"), raw.get("headers"), raw.get("data")
    if (
        type(v) is not int
        or v != FORMAT_VERSION
        or type(event_id) is not str
        or type(type_name) is not str
        or type(raw.get("topic")) is not str
        or type(occurred_at) is not str
        or type(headers) is not dict
        or type(data) is not dict
        or (headers and not all(type(value) is str for value in headers.values()))
    ):
        return None
    cls = (types or {}).get(type_name) or event_class(type_name)
    try:
        if cls is None or cls is UnknownEvent:
            unknown: UnknownEvent = UnknownEvent.__pydantic_validator__.validate_python(
                {
                    "id": event_id,
                    "occurred_at": occurred_at,
                    "headers": headers,
                    "type": type_name,
                    "data": data,
                }
            )
            return unknown
        if not _parses_occurred_at_plainly(cls):
            return None
        # What cls.model_validate(...) does, minus its wrapper.
        event: Event = cls.__pydantic_validator__.validate_python(
            {**data, "id": event_id, "occurred_at": occurred_at, "headers": headers}
        )
        return event
    except ValidationError:
        return None


_plain: dict[type[Event], bool] = {}


def _parses_occurred_at_plainly(cls: type[Event]) -> bool:
    """Whether ``cls`` turns an ISO string ``occurred_at`` into the datetime Envelope would.

    True unless the class changes ``occurred_at`` or has a validator that could see the
    raw input (a before/wrap/plain model validator, or any validator of ``occurred_at``):
    then the fast path, which hands the string over unparsed, is not used for it.
    """
    plain = _plain.get(cls)
    if plain is None:
        field = cls.model_fields.get("occurred_at")
        decorators = cls.__pydantic_decorators__
        plain = (
            field is not None
            and field.annotation is datetime
            and not field.metadata
            and all(d.info.mode == "after" for d in decorators.model_validators.values())
            and not any(
                "occurred_at" in d.info.fields or "*" in d.info.fields
                for d in decorators.field_validators.values()
            )
            and not decorators.validators
            and not decorators.root_validators
        )
        _plain[cls] = plain
    return plain


def _decode_checked(body: bytes, types: Mapping[str, type[Event]] | None) -> Event:
    """Decode through the :class:`Envelope` model, with the reason of any failure."""
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
