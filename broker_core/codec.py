"""The wire format: events to JSON envelopes and back (documented in docs/wire-format.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from broker_core.errors import BrokerError, InvalidEvent
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
    key: str | None = None
    """The ordering key, if the event has one; envelopes without it decode as before."""


_ENVELOPE = Envelope.__pydantic_validator__

# One encoder for every call: ``json.dumps`` with options builds a new one each time.
# Without allow_nan=False it writes NaN and Infinity, which are not JSON: consumers in
# other languages refuse them.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_REPLACEMENT = "\ufffd".encode()


def encode(event: Event, topic: str, key: str | None = None) -> bytes:
    """Serialise ``event`` as published to ``topic``, with its ordering ``key`` if any.

    Raises InvalidEvent, naming the field, for a value the wire format cannot carry: a
    string with a lone surrogate, a NaN or infinite float, an integer too long for
    Python to write out, or a value pydantic cannot serialise.
    """
    try:
        envelope = {
            "v": FORMAT_VERSION,
            "id": event.id,
            "type": event.type_name,
            "topic": topic,
            "occurred_at": event.occurred_at.isoformat(),
            "headers": event.headers,
            "data": event.payload(),
        }
        if key is not None:
            envelope["key"] = key
        body = _ENCODER.encode(envelope).encode()
    # pydantic's serialisation errors and UnicodeEncodeError are ValueErrors too.
    except ValueError as exc:
        # Neither pydantic nor the encoder says where it failed; finding out walks the
        # whole event, so only a failed encode pays for it.
        raise InvalidEvent(f"cannot publish {_name(event)}: {_culprit_in(event) or exc}") from exc
    # pydantic writes a dict key holding a lone surrogate as U+FFFD instead of failing.
    # Looking for U+FFFD is a fast byte search; only the rare body holding one is walked.
    if _REPLACEMENT in body and (reason := _culprit_in(event)):
        raise InvalidEvent(f"cannot publish {_name(event)}: {reason}")
    return body


def _culprit_in(event: Event) -> str | None:
    """Say which value of ``event`` the wire format cannot carry, and why; None if none."""
    # The Python values, not the JSON ones: pydantic has replaced surrogates in keys there.
    sent = {"id": event.id, "type": event.type_name, "headers": event.headers}
    return _culprit({**sent, "data": event.payload("python")}, "")


def _name(event: Event) -> str:
    # repr: the id or type may itself hold the surrogate, which a message must not.
    return f"{event.type_name!r} event {event.id!r}"


def _culprit(value: object, path: str) -> str | None:
    """Say which value in ``value`` (JSON-like data at ``path``) the encoder refuses, and why.

    None if it refuses none.
    """
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return (
                f"{path} holds a lone surrogate {value[exc.start]!r} at index {exc.start}, "
                "which UTF-8 cannot encode (os.fsdecode makes these of undecodable bytes)"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{path} is {value!r}, which JSON cannot represent"
    elif isinstance(value, int):
        try:
            repr(value)
        except ValueError:
            return f"{path} is an integer too long to write out (see sys.set_int_max_str_digits)"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _culprit(key, f"the key {key!r} of {path}") or _culprit(item, _child(path, key))
            if found:
                return found
    elif isinstance(value, list | tuple | set | frozenset):  # as the JSON list they become
        for index, item in enumerate(value):
            found = _culprit(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _child(path: str, key: object) -> str:
    """The path of ``key`` under ``path``: ``data.name``, ``data['a.b']``, ``data[3]``."""
    # Keys of the Python values need not be strings: pydantic writes dict[int, str] keys out.
    if isinstance(key, str) and key.isprintable() and key and not any(c in key for c in ".[]'"):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def decode(body: bytes, types: Mapping[str, type[Event]] | None = None) -> Event:
    """Rebuild the event in ``body``.

    The class is looked up in ``types`` first, then among all defined Event subclasses;
    a type known to neither comes back as :class:`UnknownEvent`. Raises DecodeError,
    with the reason, for anything that is not a valid envelope of a supported version.
    """
    # The models' validators called directly: model_validate_json and model_validate only
    # wrap them, at a cost per event.
    try:
        envelope: Envelope = _ENVELOPE.validate_json(body)
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
        event: Event = cls.__pydantic_validator__.validate_python(
            {
                **envelope.data,
                "id": envelope.id,
                "occurred_at": envelope.occurred_at,
                "headers": envelope.headers,
            }
        )
        return event
    except ValidationError as exc:
        raise DecodeError(f"data does not fit {envelope.type}: {_summary(exc)}") from exc


def _summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
