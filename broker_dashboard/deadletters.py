"""Dead letters read in bounded pieces: pages, a grouping window, one letter by position.

A group may hold 100k dead letters. No page view reads more than
:data:`GROUPING_WINDOW` of them:

- the list is paged (``offset``/``limit`` of ``Transport.dead_letters``);
- grouping by reason and error covers the oldest :data:`GROUPING_WINDOW`, and says so;
  acting on a group acts on its letters in that window, picked again when the action
  runs, so a replay or purge never touches a letter the operator did not see counted;
  the next ones then come into the window;
- one letter is found from the position it was listed at, looked for in a small
  neighbourhood (deaths, replays and purges since may have moved it a little).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker_core.broker import Broker
from broker_core.transport import DeadLetter

__all__ = [
    "GROUPING_WINDOW",
    "PAGE_SIZE",
    "ErrorGroup",
    "find_letter",
    "group_by_error",
    "matching_ids",
    "page",
    "window",
]

PAGE_SIZE = 50
GROUPING_WINDOW = 1000
"""How many of the oldest dead letters the grouping by reason and error covers."""
_NEIGHBOURHOOD = 50


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Dead letters of the grouping window that share a reason and an error."""

    reason: str
    error: str | None
    count: int
    first_id: str


async def page(broker: Broker, topic: str, group: str, number: int) -> list[DeadLetter]:
    """Page ``number`` (from 0) of the dead letters, oldest death first."""
    return await broker.dead_letters(
        topic, group=group, limit=PAGE_SIZE, offset=max(number, 0) * PAGE_SIZE
    )


def group_by_error(letters: Sequence[DeadLetter]) -> list[ErrorGroup]:
    """``letters`` grouped by (reason, error), the largest group first."""
    counts: dict[tuple[str, str | None], list[DeadLetter]] = {}
    for letter in letters:
        counts.setdefault((letter.reason, letter.error), []).append(letter)
    groups = [
        ErrorGroup(reason, error, len(members), members[0].event_id)
        for (reason, error), members in counts.items()
    ]
    return sorted(groups, key=lambda g: -g.count)


async def window(broker: Broker, topic: str, group: str) -> list[DeadLetter]:
    """The oldest :data:`GROUPING_WINDOW` dead letters."""
    return await broker.dead_letters(topic, group=group, limit=GROUPING_WINDOW)


async def matching_ids(
    broker: Broker, topic: str, group: str, reason: str, error: str | None
) -> list[str]:
    """The ids of the window's letters with this reason and error, read now."""
    return [
        letter.event_id
        for letter in await window(broker, topic, group)
        if letter.reason == reason and letter.error == error
    ]


async def find_letter(
    broker: Broker, topic: str, group: str, event_id: str, position: int
) -> DeadLetter | None:
    """The dead letter ``event_id``, listed at ``position``; None if it is not near there."""
    start = max(position - _NEIGHBOURHOOD, 0)
    nearby = await broker.dead_letters(
        topic, group=group, limit=2 * _NEIGHBOURHOOD + 1, offset=start
    )
    return next((letter for letter in nearby if letter.event_id == event_id), None)
