"""The event model: typed events as pydantic models, and their time-ordered ids."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ENVELOPE_FIELDS", "Event", "UnknownEvent", "event_class", "new_event_id"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


# Every pair of Crockford digits, by the 10-bit value it spells: an id is 13 lookups.
_PAIRS = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def _b32_26(value: int) -> str:
    """``value`` (at most 130 bits) as 26 Crockford base32 digits, most significant first."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_event_id() -> str:
    """A new unique id: 26 characters, sorting in creation order (ULID layout).

    48 bits of milliseconds then 80 random bits; ids made in the same millisecond by one
    process increment the random part, so they still sort in creation order.
    """
    global _last_ms, _last_rand
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1
        # 10 digits of milliseconds (50 bits, the top 2 zero), then 16 of the random part.
        return _b32_26((ms << 80) | _last_rand)


_registry: dict[str, type[Event]] = {}


def event_class(type_name: str) -> type[Event] | None:
    """The Event subclass registered under wire type ``type_name``, if any.

    Every subclass registers itself when defined; a later class with the same type name
    replaces an earlier one.
    """
    return _registry.get(type_name)


class Event(BaseModel):
    """Base class of every event.

    Subclasses declare their payload as pydantic fields and may set the class variables
    ``topic`` (where ``publish`` sends it unless told otherwise), ``event_type`` (its
    name on the wire; the class name by default) and ``key_field`` (the field holding its
    ordering key, usually its aggregate's id: events with one key are one history).
    ``occurred_at`` (default: now) must be timezone-aware and is kept in UTC::

        class OrderPlaced(Event):
            topic: ClassVar[str] = "orders"
            order_id: str
            total: float
    """

    # pydantic writes a NaN or infinity held in an ``Any`` field as null, silently; as the
    # float it is, the codec refuses it, as it refuses one in a ``float`` field.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    topic: ClassVar[str | None] = None
    event_type: ClassVar[str] = "Event"
    key_field: ClassVar[str | None] = None

    id: str = Field(default_factory=new_event_id)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("occurred_at")
    @classmethod
    def _aware_in_utc(cls, value: datetime) -> datetime:
        # The wire format requires an offset, so a naive time would be undecodable by
        # every consumer. In UTC because isoformat writes the seconds of a historic
        # zone's offset (+00:19:32), which pydantic, decoding the envelope, refuses.
        if value.utcoffset() is None:
            raise ValueError(
                "occurred_at must be timezone-aware (the wire format needs an offset): "
                "pass e.g. datetime.now(UTC)"
            )
        return value.astimezone(UTC)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__:
            cls.event_type = cls.__name__
        if cls.key_field is not None and cls.key_field not in cls.model_fields:
            raise TypeError(
                f"{cls.__name__}.key_field names {cls.key_field!r}, which is not one of its "
                f"fields ({', '.join(sorted(cls.model_fields))})"
            )
        _registry[cls.event_type] = cls

    @property
    def type_name(self) -> str:
        """This event's type name on the wire."""
        return self.event_type

    def ordering_key(self) -> str | None:
        """The value of the ``key_field`` field as text, or None without a key field."""
        if self.key_field is None:
            return None
        value = getattr(self, self.key_field)
        return None if value is None else str(value)

    def payload(self, mode: Literal["json", "python"] = "json") -> dict[str, Any]:
        """The event's own fields, the envelope's ``data``: as JSON-compatible data, or
        with ``mode="python"`` as the Python objects they hold.
        """
        return self.model_dump(mode=mode, exclude=_EXCLUDE)


ENVELOPE_FIELDS: frozenset[str] = frozenset({"id", "occurred_at", "headers"})
"""Fields of every Event that travel in the envelope rather than in ``data``."""
_EXCLUDE = set(ENVELOPE_FIELDS)


class UnknownEvent(Event):
    """An event whose wire type this process has no class for.

    Topic handlers receive it with the wire ``type`` and the undecoded ``data``, so a
    service can handle, log or forward events it has no model for.
    """

    event_type: ClassVar[str] = "UnknownEvent"

    type: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def type_name(self) -> str:
        """The wire type this event arrived with."""
        return self.type

    def payload(self, mode: Literal["json", "python"] = "json") -> dict[str, Any]:
        """The data exactly as it arrived, in either mode."""
        return dict(self.data)
