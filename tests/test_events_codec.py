"""The event model and the wire format."""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, JsonValue, ValidationError

from broker_core import BrokerError, DecodeError, Event, InvalidEvent, UnknownEvent
from broker_core.codec import FORMAT_VERSION, Envelope, decode, encode
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
    by_number: dict[int, str] = Field(default_factory=dict)


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
        # pydantic turns this key into U+FFFD rather than failing.
        (Listing(extra={"\udc80": 1}), r"the key '\\udc80' of data\.extra holds"),
        (Listing(extra={"n": float("nan")}), r"data\.extra\.n is nan"),
        (Listing(by_number={3: "\udc80"}), r"data\.by_number\[3\] holds"),
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


def test_replacement_characters_are_sent_as_they_are() -> None:
    event = Listing(extra={"\ufffd": "\ufffd"}, headers={"\ufffd": "x"})
    assert decode(encode(event, "t")) == event


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


# -- every event encode accepts round-trips ------------------------------------------------


class Everything(Event):
    text: str
    count: int
    ratio: float
    flag: bool
    maybe: str | None
    tags: list[str]
    tree: dict[str, JsonValue]
    at: datetime


# Any code point, lone surrogates included: encode must refuse those, not crash.
texts = st.text(st.characters(exclude_categories=()), max_size=12)
# Up to 5000 digits: past 4300 Python refuses to write an int out.
ints = st.integers() | st.integers(0, 5000).map(lambda digits: -(10**digits))
floats = st.floats()
# Data datetimes keep their offset, which pydantic writes in whole minutes (see
# docs/wire-format.md): naive or fixed whole-minute offsets only.
minute_offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
data_datetimes = st.datetimes(timezones=st.none() | minute_offsets)
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
envelope_fields: dict[str, Any] = {
    "id": st.just(None) | texts,
    # Any zone, folds and historic offsets with seconds included: it is kept in UTC.
    "occurred_at": st.datetimes(timezones=st.timezones()),
    "headers": st.dictionaries(texts, texts, max_size=3),
}


def _with_envelope(cls: type[Event], **fields: Any) -> st.SearchStrategy[Event]:
    def build(id: str | None, **kwargs: Any) -> Event:
        # id None: the default, a fresh ULID.
        return cls(**kwargs) if id is None else cls(id=id, **kwargs)

    return st.builds(build, **envelope_fields, **fields)


events = st.one_of(
    _with_envelope(
        Everything,
        text=texts,
        count=ints,
        ratio=floats,
        flag=st.booleans(),
        maybe=st.none() | texts,
        tags=st.lists(texts, max_size=3),
        tree=st.dictionaries(texts, json_values, max_size=3),
        at=data_datetimes,
    ),
    _with_envelope(Shipped, parcel=texts, weight=floats, tags=st.lists(texts, max_size=3)),
    _with_envelope(Renamed, value=ints),
    _with_envelope(
        Listing,
        items=st.lists(st.builds(Item, name=texts), max_size=3),
        extra=st.dictionaries(texts, json_values, max_size=3),
    ),
    _with_envelope(Appointment, at=data_datetimes),
    # Forwarding an event of a type this process has no class for.
    _with_envelope(
        UnknownEvent,
        type=texts.map(lambda t: f"unregistered:{t}"),
        data=st.dictionaries(texts, json_values, max_size=3),
    ),
)


def _fits_the_wire(value: object) -> bool:
    """Whether ``value`` holds only what docs/wire-format.md says JSON over UTF-8 carries."""
    if isinstance(value, str):
        return not any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):
        return abs(value) < 10 ** sys.get_int_max_str_digits()
    if isinstance(value, dict):
        return all(_fits_the_wire(k) and _fits_the_wire(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_fits_the_wire(item) for item in value)
    return True


@given(event=events)
def test_every_event_encode_accepts_round_trips(event: Event) -> None:
    fields = {**event.model_dump(), "type": event.type_name}
    if _fits_the_wire(fields):
        assert decode(encode(event, "t")) == event
    else:
        with pytest.raises(InvalidEvent, match=r"^cannot publish .* event .*: "):
            encode(event, "t")


def test_the_ordering_key_travels_in_the_envelope_only_when_there_is_one() -> None:
    class KeyedInEnvelope(Event):
        key_field: ClassVar[str | None] = "order_id"
        order_id: str

    event = KeyedInEnvelope(order_id="42")
    with_key = json.loads(encode(event, "orders", event.ordering_key()))
    assert with_key["key"] == "42"
    without = json.loads(encode(event, "orders"))
    assert "key" not in without  # an envelope of before keys existed
    assert decode(encode(event, "orders", "42")) == event
    assert Envelope.model_validate(without).key is None
