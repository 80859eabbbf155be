"""The event model and the wire format."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from broker_core import BrokerError, DecodeError, Event, InvalidEvent, UnknownEvent
from broker_core.codec import FORMAT_VERSION, decode, encode
from broker_core.events import new_event_id


class Shipped(Event):
    topic: ClassVar[str] = "shipping"
    parcel: str
    weight: float
    tags: list[str] = Field(default_factory=list)


class Renamed(Event):
    event_type: ClassVar[str] = "renamed.v2"
    value: int


def test_envelope_has_the_documented_fields() -> None:
    event = Shipped(parcel="p1", weight=1.5, headers={"trace": "t"})
    envelope = json.loads(encode(event, "shipping"))
    assert envelope == {
        "v": FORMAT_VERSION,
        "id": event.id,
        "type": "Shipped",
        "topic": "shipping",
        "occurred_at": event.occurred_at.isoformat(),
        "headers": {"trace": "t"},
        "data": {"parcel": "p1", "weight": 1.5, "tags": []},
    }


def test_event_type_can_be_overridden() -> None:
    assert json.loads(encode(Renamed(value=1), "t"))["type"] == "renamed.v2"
    assert isinstance(decode(encode(Renamed(value=1), "t")), Renamed)


@given(
    parcel=st.text(max_size=50),
    weight=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(st.text(max_size=10), max_size=5),
    headers=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4),
)
def test_round_trip(parcel: str, weight: float, tags: list[str], headers: dict[str, str]) -> None:
    event = Shipped(parcel=parcel, weight=weight, tags=tags, headers=headers)
    assert decode(encode(event, "shipping")) == event


def test_unknown_type_decodes_as_unknown_event() -> None:
    body = json.dumps(
        {
            "v": 1,
            "id": "x1",
            "type": "NobodyKnowsMe",
            "topic": "t",
            "occurred_at": datetime.now(UTC).isoformat(),
            "headers": {},
            "data": {"a": [1, 2]},
        }
    ).encode()
    event = decode(body)
    assert isinstance(event, UnknownEvent)
    assert (event.type, event.data, event.id, event.type_name) == (
        "NobodyKnowsMe",
        {"a": [1, 2]},
        "x1",
        "NobodyKnowsMe",
    )
    # Re-publishing an unknown event keeps its wire type and data.
    assert json.loads(encode(event, "t"))["type"] == "NobodyKnowsMe"
    assert json.loads(encode(event, "t"))["data"] == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not an event envelope"),
        (b"{}", "not an event envelope"),
        (b"\xff\xfe", "not an event envelope"),
        (
            b'{"v":2,"id":"a","type":"Shipped","topic":"t","occurred_at":"2026-01-01T00:00:00Z",'
            b'"headers":{},"data":{}}',
            "unsupported envelope version 2",
        ),
        (
            b'{"v":1,"id":"a","type":"Shipped","topic":"t","occurred_at":"2026-01-01T00:00:00Z",'
            b'"headers":{},"data":{"parcel":"p","weight":"heavy"}}',
            "data does not fit Shipped: weight",
        ),
        (
            b'{"v":1,"id":"a","type":"Shipped","topic":"t","occurred_at":"2026-01-01T00:00:00",'
            b'"headers":{},"data":{"parcel":"p","weight":1}}',
            "occurred_at: Input should have timezone info",
        ),
    ],
)
def test_undecodable_bodies_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(body)


class Item(BaseModel):
    name: str


class Listing(Event):
    topic: ClassVar[str] = "listings"
    items: list[Item] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


BAD_NAME = os.fsdecode(b"report-\xff.txt")  # a bad filename: "report-\udcff.txt"


@pytest.mark.parametrize(
    ("event", "where"),
    [
        (
            Listing(items=[Item(name="a"), Item(name="b"), Item(name=BAD_NAME)]),
            r"data\.items\[2\]\.name holds a lone surrogate '\\udcff' at index 7",
        ),
        (Listing(headers={"x": "\ud800"}), r"headers\.x holds a lone surrogate '\\ud800'"),
        (Listing(headers={"\ud800": "x"}), r"the key '\\ud800' of headers holds"),
        (Listing(extra={"a.b": ["\udc80"]}), r"data\.extra\['a\.b'\]\[0\] holds"),
        (Listing(id="bad-\udc80"), r"^cannot publish 'Listing' event 'bad-\\udc80': id holds"),
        (Shipped(parcel="p", weight=float("nan")), "data.weight is nan, which JSON cannot"),
        (Shipped(parcel="p", weight=float("-inf")), "data.weight is -inf, which JSON cannot"),
        (Listing(extra={"n": [10**5000]}), r"data\.extra\.n\[0\] is an integer too long"),
        (Listing(extra={"thing": object()}), "Unable to serialize unknown type"),
    ],
)
def test_what_the_wire_cannot_carry_is_refused_with_the_field(event: Event, where: str) -> None:
    with pytest.raises(InvalidEvent, match=where) as info:
        encode(event, "t")
    assert isinstance(info.value, BrokerError)
    assert f"{event.type_name!r} event {event.id!r}" in str(info.value)
    # The message itself is printable anywhere: the culprit is escaped.
    str(info.value).encode()


def test_naive_occurred_at_is_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match=r"occurred_at must be timezone-aware.*now\(UTC\)"):
        Shipped(parcel="p", weight=1, occurred_at=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "offset",
    [timedelta(hours=5, minutes=30), timedelta(minutes=19, seconds=32), -timedelta(seconds=1)],
)
def test_occurred_at_is_kept_in_utc_and_round_trips(offset: timedelta) -> None:
    # A historic zone's offset has seconds (Amsterdam's was +00:19:32), which isoformat
    # writes and the envelope's parser refuses: UTC is always decodable.
    local = datetime(1900, 1, 1, 12, tzinfo=timezone(offset))
    event = Shipped(parcel="p", weight=1, occurred_at=local)
    assert event.occurred_at == local
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert json.loads(encode(event, "t"))["occurred_at"].endswith("+00:00")
    assert decode(encode(event, "t")) == event


class Appointment(Event):
    at: datetime


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 3, 1, 9, 30),
        datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-3))),
    ],
)
def test_datetimes_in_data_keep_their_awareness(at: datetime) -> None:
    decoded = decode(encode(Appointment(at=at), "t"))
    assert isinstance(decoded, Appointment)
    assert (decoded.at, decoded.at.utcoffset()) == (at, at.utcoffset())


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_events_are_immutable_and_strict() -> None:
    event = Shipped(parcel="p", weight=1)
    with pytest.raises(ValueError):
        event.parcel = "q"  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        Shipped(parcel="p", weight=1, colour="red")  # type: ignore[call-arg]
