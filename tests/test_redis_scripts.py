"""Each script's KEYS agree three ways: its header, its code, and the Python that calls it.

The header is the one declaration (see broker_redis/scripts.py); loading a script checks
the code's ``KEYS[i]`` against it, and every caller builds KEYS from its names. None of
these tests needs a Redis server.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import pytest

from broker_core.transport import Receipt
from broker_redis.keys import GroupKeys, Keys, TopicKeys, partition_tag
from broker_redis.scripts import SCRIPT_NAMES, Call, load_script, parse_script
from broker_redis.transport import RedisTransport

T, G, G2 = "orders", "billing", "shipping"
TOPIC_FIELDS = {f.name for f in fields(TopicKeys)}


def lua(keys: str, body: str) -> str:
    """A script's text with ``keys`` as its header's KEYS section."""
    return f"--[[ test: a script\n\nKEYS: {keys}\nARGV: none\n]]\n{body}\n"


def test_every_script_declares_its_keys_and_its_code_binds_them_by_those_names() -> None:
    assert {"claim", "publish", "ack"} <= set(SCRIPT_NAMES)
    for name in SCRIPT_NAMES:
        script = load_script(name)  # raises if the code and the header disagree
        assert script.keys, name
        assert len(set(script.keys)) == len(script.keys), name


def test_topic_and_group_keys_share_no_field_name() -> None:
    # A header name picks its key set by name alone.
    assert not TOPIC_FIELDS & {f.name for f in fields(GroupKeys)}


def test_a_call_gets_its_keys_in_the_order_of_the_header() -> None:
    keys = Keys("p")
    t, g = keys.topic(T), keys.group(T, G)
    call = load_script("nack").call(["", "0", "e1", "tok"], topic=t, group=g)
    assert call.keys == [
        f"p:{{{T}}}:g:{G}:{name}"
        for name in ("ready", "leased", "tokens", "errors", "delayed", "suspects", "marker")
    ]
    publish = load_script("publish").call([], topic=t, groups=[g, keys.group(T, G2)])
    assert publish.keys == [
        f"p:{{{T}}}:msg",
        f"p:{{{T}}}:refs",
        f"p:{{{T}}}:groups",
        f"p:{{{T}}}:dedup",
        f"p:{{{T}}}:eventkeys",
        f"p:{{{T}}}:ordered",
        f"p:{{{T}}}:seq",
        f"p:{{{T}}}:retention",
        f"p:{{{T}}}:log",
        f"p:{{{T}}}:logged",
        f"p:{{{T}}}:pins",
        f"p:{{{T}}}:published",
        f"p:{{{T}}}:layout",
        f"p:{{{T}}}:g:{G}:ready",
        f"p:{{{T}}}:g:{G}:marker",
        f"p:{{{T}}}:g:{G}:lanes",
        f"p:{{{T}}}:g:{G}:heads",
        f"p:{{{T}}}:g:{G}:held",
        f"p:{{{T}}}:g:{G2}:ready",
        f"p:{{{T}}}:g:{G2}:marker",
        f"p:{{{T}}}:g:{G2}:lanes",
        f"p:{{{T}}}:g:{G2}:heads",
        f"p:{{{T}}}:g:{G2}:held",
    ]


def test_a_call_missing_a_key_set_it_needs_fails_loudly() -> None:
    keys = Keys("p")
    with pytest.raises(ValueError, match="ack needs the topic's keys for 'msg'"):
        load_script("ack").call([""], group=keys.group(T, G))
    with pytest.raises(ValueError, match="nack needs the group's keys"):
        load_script("nack").call([""], topic=keys.topic(T))
    with pytest.raises(ValueError, match="takes no keys per group"):
        load_script("stats").call([""], group=keys.group(T, G), groups=[keys.group(T, G)])


def test_the_grammar_of_a_header_with_keys_per_group() -> None:
    script = parse_script(
        "fan_out",
        lua(
            "1 msg  2 groups\n      then per group g = 1..n: 1+2g ready  2+2g marker",
            "local msg, groups = KEYS[1], KEYS[2]\n"
            "local k = {marker = KEYS[2 + 2 * g], ready = KEYS[1 + 2 * g]}",
        ),
    )
    assert (script.keys, script.keys_per_group) == (("msg", "groups"), ("ready", "marker"))


@pytest.mark.parametrize(
    ("keys", "body", "error"),
    [
        pytest.param(
            "1 ready  2 leased",
            "local leased, ready = KEYS[1], KEYS[2]",
            "binds leased = KEYS.1., but its header names that key ready",
            id="locals-swapped",
        ),
        pytest.param(
            "1 ready  2 leased",
            "local ready = KEYS[1]\nlocal k = {tokens = KEYS[2]}",
            "binds tokens = KEYS.2., but its header names that key leased",
            id="table-field-misnamed",
        ),
        pytest.param(
            "1 ready  2 leased",
            "local ready, leased, marker = KEYS[1], KEYS[2], KEYS[3]",
            "binds marker = KEYS.3., but its header names that key nothing",
            id="past-the-header",
        ),
        pytest.param(
            "1 ready  2 leased  3 marker",
            "local ready, leased = KEYS[1], KEYS[2]",
            r"declares KEYS its code never binds: \['marker'\]",
            id="declared-not-bound",
        ),
        pytest.param(
            "1 ready  2 leased",
            "local ready, leased = KEYS[1], KEYS[2]\nredis.call('LLEN', KEYS[1])",
            "reads KEYS other than as 'name = KEYS.i.'",
            id="read-outside-a-binding",
        ),
        pytest.param(
            "1 ready  2 suspicions",
            "local ready, suspicions = KEYS[1], KEYS[2]",
            "'suspicions' is no field of TopicKeys or GroupKeys",
            id="not-in-keys-py",
        ),
        pytest.param(
            "1 ready  3 leased",
            "local ready, leased = KEYS[1], KEYS[3]",
            "not numbered 1, 2",
            id="header-misnumbered",
        ),
        pytest.param(
            "1 ready (LIST)  2 leased",
            "local ready, leased = KEYS[1], KEYS[2]",
            "KEYS must read",
            id="header-prose",
        ),
        pytest.param(
            "1 msg\n      then per group g = 1..n: 0+2g ready  1+2g marker",
            "local msg = KEYS[1]\nlocal ready, marker = KEYS[1 + 2 * g], KEYS[0 + 2 * g]",
            "binds ready = KEYS.1 . 2 . g., but its header names that key marker",
            id="per-group-swapped",
        ),
        pytest.param(
            "1 msg\n      then per group g = 1..n: 2+2g ready  3+2g marker",
            "local msg = KEYS[1]",
            "per group key ready is misnumbered",
            id="per-group-misnumbered",
        ),
    ],
)
def test_a_script_whose_code_and_header_disagree_does_not_load(
    keys: str, body: str, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        parse_script("broken", lua(keys, body))


def test_a_script_without_a_keys_line_does_not_load() -> None:
    with pytest.raises(ValueError, match="no 'KEYS:' line"):
        parse_script("broken", "--[[ no header of keys ]]\nreturn 1\n")


# What each script answers when nothing is there, for the transport to go on.
EMPTY_REPLIES: dict[str, Any] = {
    "claim": [b"1", b"31", b"", 0, 0, 0],
    "poll": [0, b"1", b""],
    "stats": [0, 0, 0, 0, b"1", b"", 0],
    "dead_letters": [],
    "ack": [1],
    "extend": [1],
    "release": [1],
    # A new group from history: a copy to run, which completes at once.
    "subscribe": [2, 0],
    "copy_history": [1, 0],
    "rewind": 2,
    "count_history": [b"", 0],
    "unsubscribe": [1, 1],
    "topic_stats": [b"", b"", 0, b"", 0],
    "seal": [b"sealed", b"", b""],
    # How many were moved or deleted, how many are still dead.
    "replay_dead": [0, 0],
    "purge_dead": [0, 0],
}


class FakeClient:
    """The plain commands the transport sends besides scripts (the partition count), for
    the tests below: a topic of one partition, until configure_topic changes it."""

    def __init__(self) -> None:
        self.layout: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.layout.get(key)

    async def set(self, key: str, value: Any) -> None:
        self.layout[key] = str(value).encode()

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.replies: list[Any] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def get(self, key: str) -> None:
        self.replies.append(self.client.layout.get(key))

    def set(self, key: str, value: Any) -> None:
        self.client.layout[key] = str(value).encode()
        self.replies.append(True)

    def delete(self, key: str) -> None:
        self.replies.append(int(self.client.layout.pop(key, None) is not None))

    def incrby(self, key: str, n: int) -> None:
        self.replies.append(n)

    def smembers(self, key: str) -> None:
        self.replies.append(set())

    async def execute(self) -> list[Any]:
        return self.replies


async def test_every_caller_passes_the_keys_of_its_own_topic_and_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tr = RedisTransport("redis://127.0.0.1:1", key_prefix="p")  # never connects
    calls: list[Call] = []
    subscribed = [[G.encode(), G2.encode()], 2]  # publish learns the groups, then succeeds

    def reply(call: Call) -> Any:
        if call.script.name == "publish":
            return subscribed.pop(0) if subscribed else 2
        if call.script.name == "drop_unit":  # the counters of each group passed
            return [1, 0] + [0] * int(call.args[2])
        return EMPTY_REPLIES.get(call.script.name, 1)

    async def run(op: str, batch: Sequence[Call]) -> list[Any]:
        calls.extend(batch)
        return [reply(call) for call in batch]

    async def register(topic: str) -> None:
        assert topic == T

    monkeypatch.setattr(tr, "_run", run)
    monkeypatch.setattr(tr, "_run_partial", run)
    monkeypatch.setattr(tr, "_register", register)
    monkeypatch.setattr(tr, "_redis", FakeClient())
    receipt = Receipt(T, G, "e1", "tok")
    await tr.subscribe(T, G, history=60.0)
    await tr.configure_topic(T, max_events=10)
    await tr.topic_stats(T)
    await tr.rewind(T, G, history=60.0)
    await tr.rewind(T, G, history=60.0, dry_run=True)
    await tr.publish(T, [("e1", b"x")])
    await tr.claim(G, [T], max_count=1, lease=30, max_attempts=3)
    await tr._poll(G, tr._units_of(T))
    await tr.ack([receipt])
    await tr.extend([receipt], 30)
    await tr.release([receipt])
    await tr.nack(receipt, error="boom")
    await tr.kill(receipt, reason="handler")
    await tr.dead_letters(T, G)
    await tr.replay_dead(T, G)
    await tr.purge_dead(T, G)
    await tr.stats(T, G)
    await tr.unsubscribe(T, G)
    # Then the same on two partitions: the change, and every call on each partition.
    await tr.configure_topic(T, partitions=2)
    await tr.configure_topic(T, partitions=2)  # no change: opens what a change left sealed
    await tr.publish(T, [("e1", b"x"), ("e2", b"y")])
    await tr.claim(G, [T], max_count=2, lease=30, max_attempts=3)
    receipt = Receipt(T, G, "e1", "1.2.ab.1")
    await tr.ack([receipt])
    await tr.nack(receipt)
    await tr.kill(receipt, reason="handler")
    await tr.stats(T, G)
    await tr.dead_letters(T, G)
    assert {call.script.name for call in calls} == set(SCRIPT_NAMES)
    assert [len(call.keys) for call in calls if call.script.name == "publish"][:2] == [13, 23]
    units = {T, *(partition_tag(T, p, 2) for p in range(2))}
    for call in calls:
        assert call.keys == expected_keys(call, units), call.script.name


def expected_keys(call: Call, tags: set[str]) -> list[str]:
    """The KEYS its header names, spelled out for group G of the unit of topic T whose
    tag (one of ``tags``) the call's first key has.

    The keys per group (publish, seal, drop_unit) are those of the groups it passes in
    ARGV (publish: after the time, the dedup window and the count: n, then the names;
    seal: after the time, the trim step, the count and the seal), or, for drop_unit,
    those of G and G2 (the groups the fake publish saw).
    """
    script = call.script
    tag = call.keys[0].split("{")[1].split("}")[0]
    assert tag in tags, call.keys[0]
    names = [
        f"p:{{{tag}}}:{name}" if name in TOPIC_FIELDS else f"p:{{{tag}}}:g:{G}:{name}"
        for name in script.keys
    ]
    if script.keys_per_group:
        if script.name == "publish":
            groups = call.args[4 : 4 + int(call.args[3])]
        elif script.name == "seal":
            groups = call.args[5 : 5 + int(call.args[4])]
        else:
            groups = [G, G2][: int(call.args[2])]
        for group in groups:
            names += [f"p:{{{tag}}}:g:{group!s}:{name}" for name in script.keys_per_group]
    return names
