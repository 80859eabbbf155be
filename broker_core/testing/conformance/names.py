"""Conformance of names: every entry point refuses bad topic and group names."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from broker_core.errors import InvalidName
from broker_core.names import MAX_NAME_LENGTH
from broker_core.testing.conformance.base import ConformanceBase, G, T
from broker_core.testing.harness import Harness
from broker_core.transport import Transport

__all__ = ["BAD_NAMES", "NameConformance"]

BAD_NAMES: tuple[str, ...] = (
    "",
    "a:b",
    "a{b",
    "a}b",
    "{orders}",
    "a b",
    " orders",
    "orders\n",
    "-orders",
    "x" * (MAX_NAME_LENGTH + 1),
)
"""Names every entry point must refuse with InvalidName: storage-key breakers and misfits."""

# One call per entry point that takes a name; the bad name lands in the topic or group slot.
NameCall = Callable[[Transport, str], Awaitable[object]]
_TOPIC_CALLS: dict[str, NameCall] = {
    "subscribe": lambda t, bad: t.subscribe(bad, G),
    "unsubscribe": lambda t, bad: t.unsubscribe(bad, G),
    "groups": lambda t, bad: t.groups(bad),
    "publish": lambda t, bad: t.publish(bad, [("e1", b"x")]),
    "claim": lambda t, bad: t.claim(G, [bad], max_count=1, lease=1.0, max_attempts=3),
    "wait": lambda t, bad: t.wait(G, [bad], 0.0),
    "dead_letters": lambda t, bad: t.dead_letters(bad, G),
    "replay_dead": lambda t, bad: t.replay_dead(bad, G),
    "purge_dead": lambda t, bad: t.purge_dead(bad, G),
    "stats": lambda t, bad: t.stats(bad, G),
}
_GROUP_CALLS: dict[str, NameCall] = {
    "subscribe": lambda t, bad: t.subscribe(T, bad),
    "unsubscribe": lambda t, bad: t.unsubscribe(T, bad),
    "claim": lambda t, bad: t.claim(bad, [T], max_count=1, lease=1.0, max_attempts=3),
    "wait": lambda t, bad: t.wait(bad, [T], 0.0),
    "dead_letters": lambda t, bad: t.dead_letters(T, bad),
    "replay_dead": lambda t, bad: t.replay_dead(T, bad),
    "purge_dead": lambda t, bad: t.purge_dead(T, bad),
    "stats": lambda t, bad: t.stats(T, bad),
}


class NameConformance(ConformanceBase):
    """Name validation, before any transition: bad names raise InvalidName and store nothing.

    Covers every entry point taking a topic or group with each of :data:`BAD_NAMES`, and
    the longest valid names working end to end.
    """

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", BAD_NAMES)
    @pytest.mark.parametrize("call", sorted(_TOPIC_CALLS))
    async def test_bad_topic_names_are_refused(self, harness: Harness, call: str, bad: str) -> None:
        with pytest.raises(InvalidName):
            await _TOPIC_CALLS[call](harness.transport, bad)
        assert await harness.transport.topics() == []

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", BAD_NAMES)
    @pytest.mark.parametrize("call", sorted(_GROUP_CALLS))
    async def test_bad_group_names_are_refused(self, harness: Harness, call: str, bad: str) -> None:
        with pytest.raises(InvalidName):
            await _GROUP_CALLS[call](harness.transport, bad)
        assert await harness.transport.groups(T) == []

    @pytest.mark.asyncio
    async def test_longest_valid_names_work(self, harness: Harness) -> None:
        topic, group = "t" * MAX_NAME_LENGTH, "g-1.x_" + "g" * (MAX_NAME_LENGTH - 6)
        await harness.transport.subscribe(topic, group)
        assert await harness.publish(topic, "e1") == 1
        assert [m.event_id for m in await harness.claim(group, topic)] == ["e1"]
