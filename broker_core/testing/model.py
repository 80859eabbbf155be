"""A pure model of the delivery state machine, per (event, group); no I/O, no clock.

The model is what the state machine test holds a transport to. It is deliberately only
as strict as docs/semantics.md: where the protocol leaves a choice open it accepts every
allowed answer and then adopts the transport's (see :meth:`DeliveryModel.take`).

READY order is kept as a list of blocks. Block 0 is the *redelivery pool*: events back
from an expired lease, an immediate nack or a due delay, all of which go to the front of
the queue, in an order the protocol does not fix. The following blocks come in queue
order: one block per first delivery (publish order) and one per ``replay_dead`` call
(the replayed events, in an unspecified order among themselves). A claim must take from
the first non-empty block before any later one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker_core.transport import Receipt

__all__ = ["DeliveryModel", "GroupModel", "ModelCopy", "State"]


class State(enum.Enum):
    """Where one event is for one group."""

    READY = "ready"
    LEASED = "leased"
    DELAYED = "delayed"
    DEAD = "dead"
    DONE = "done"


@dataclass
class ModelCopy:
    """One group's copy of one published event."""

    event_id: str
    body: bytes
    key: str | None = None
    state: State = State.READY
    attempts: int = 0
    receipt: Receipt | None = None
    """The receipt of the current lease; only meaningful while LEASED."""
    deadline: float = 0.0
    """Lease deadline while LEASED; due time while DELAYED."""
    error: str | None = None
    reason: str = ""
    died_at: float = 0.0
    suspect: bool = False
    """Its last lease expired, and no delivery of it was nacked since: it goes out alone."""


@dataclass
class GroupModel:
    """The copies one group holds of one topic's events."""

    copies: dict[str, ModelCopy] = field(default_factory=dict)
    """Every copy not DONE, by event id (a DONE copy is forgotten, as the store forgets it)."""
    blocks: list[set[str]] = field(default_factory=lambda: [set()])
    """READY in queue order; blocks[0] is the redelivery pool (see the module docstring)."""
    dead: list[str] = field(default_factory=list)
    """Dead event ids, oldest death first."""
    done: int = 0

    def counts(self) -> tuple[int, int, int, int]:
        """READY, LEASED, DELAYED and DEAD counts."""
        by_state = {s: 0 for s in State}
        for c in self.copies.values():
            by_state[c.state] += 1
        ready = sum(len(b) for b in self.blocks)
        assert ready == by_state[State.READY], "model: READY blocks out of step with copies"
        assert len(self.dead) == by_state[State.DEAD], "model: dead list out of step"
        return ready, by_state[State.LEASED], by_state[State.DELAYED], len(self.dead)

    def ready_ids(self) -> set[str]:
        """Every READY event id."""
        return set().union(*self.blocks)

    def front(self) -> set[str]:
        """The events a claim may take next: the first non-empty block."""
        return next((b for b in self.blocks if b), set())

    def suspect_in_front(self) -> bool:
        """Whether a claim may stop here: it reached an event that must go out alone."""
        return any(self.copies[i].suspect for i in self.front())


class DeliveryModel:
    """Topics, their subscribed groups, and every group's copies; time passed in explicitly.

    Methods that settle a delivery (``ack``, ``nack``, ``extend``, ``kill``) return what a
    correct transport returns: False, with nothing changed, for a stale receipt.
    """

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, GroupModel]] = {}
        self.windows: dict[str, dict[str, float]] = {}
        """Per topic, event id -> end of its dedup window."""

    # -- subscriptions and publish --------------------------------------------------------

    def subscribe(self, topic: str, group: str) -> None:
        """Subscribe ``group``; it sees only events published from now on."""
        self.topics.setdefault(topic, {}).setdefault(group, GroupModel())

    def group(self, topic: str, group: str) -> GroupModel | None:
        """The model of (topic, group), or None if the group is not subscribed."""
        return self.topics.get(topic, {}).get(group)

    def pairs(self) -> list[tuple[str, str]]:
        """Every subscribed (topic, group)."""
        return [(t, g) for t, groups in sorted(self.topics.items()) for g in sorted(groups)]

    def dead_ids(self, topic: str, group: str) -> list[str]:
        """The dead event ids of (topic, group), oldest death first."""
        g = self.group(topic, group)
        return list(g.dead) if g else []

    def any_dead(self) -> bool:
        """Whether some group has a dead letter."""
        return any(g.dead for groups in self.topics.values() for g in groups.values())

    def held(self, topic: str, event_id: str) -> bool:
        """Whether some group of ``topic`` still holds ``event_id`` (it is not DONE)."""
        return any(event_id in g.copies for g in self.topics.get(topic, {}).values())

    def publish(
        self,
        topic: str,
        events: Iterable[tuple[str, bytes]],
        now: float = 0.0,
        dedup_window: float = 0.0,
        keys: Sequence[str | None] | None = None,
    ) -> int:
        """Append each event neither held nor within its dedup window to every group.

        Returns the number of copies enqueued (invariant 10: no duplicate publish).
        """
        groups = self.topics.get(topic, {})
        windows = self.windows.setdefault(topic, {})
        added = 0
        for i, (event_id, body) in enumerate(events):
            if not groups or self.held(topic, event_id):
                continue
            if windows.get(event_id, float("-inf")) > now:
                continue
            if dedup_window > 0:
                windows[event_id] = now + dedup_window
            added += 1
            key = None if keys is None else keys[i]
            for g in groups.values():
                g.copies[event_id] = ModelCopy(event_id, body, key)
                g.blocks.append({event_id})
        return added * len(groups)

    # -- time ------------------------------------------------------------------------------

    def reap(self, topic: str, group: str, now: float) -> None:
        """Expired leases and due delays join the redelivery pool."""
        g = self.group(topic, group)
        if g is None:
            return
        for c in g.copies.values():
            if c.state in (State.LEASED, State.DELAYED) and c.deadline <= now:
                if c.state is State.LEASED:
                    c.suspect = True
                c.state = State.READY
                c.receipt = None
                g.blocks[0].add(c.event_id)

    # -- claim -------------------------------------------------------------------------------

    def take(
        self,
        topic: str,
        group: str,
        leased: Sequence[tuple[str, Receipt, float]],
        died: Sequence[str],
        *,
        now: float,
        max_attempts: int,
    ) -> list[str]:
        """Apply one claim's effect on (topic, group) as the transport reports it.

        ``leased`` holds (event id, receipt, lease deadline) in claim order and ``died`` the
        ids the claim moved to DEAD, in death order. Call :meth:`reap` first. Returns a
        list of violations (empty if the transport's answer is one docs/semantics.md
        allows).
        """
        g = self.group(topic, group)
        if g is None:
            if leased or died:
                return [f"{topic}/{group}: claim took events of an unsubscribed topic"]
            return []
        problems: list[str] = []
        taken = [i for i, _, _ in leased] + list(died)
        if len(set(taken)) != len(taken):
            return [f"{topic}/{group}: one claim handed out or killed an event twice: {taken}"]
        ready = g.ready_ids()
        if not set(taken) <= ready:
            return [f"{topic}/{group}: claim took events not READY: {sorted(set(taken) - ready)}"]
        # The taken events must be a prefix of the queue: whole blocks, then part of one.
        rest = set(taken)
        for block in g.blocks:
            if not rest:
                break
            if not block <= rest and not rest <= block:
                problems.append(
                    f"{topic}/{group}: claim skipped READY events {sorted(block - rest)} "
                    f"to take later ones {sorted(rest - block)} (order, invariant 5)"
                )
                break
            rest -= block
        # Among the leased, queue order is kept: block indexes never go down.
        index = {i: n for n, b in enumerate(g.blocks) for i in b}
        order = [index[i] for i, _, _ in leased]
        if order != sorted(order):
            problems.append(f"{topic}/{group}: claim returned events out of queue order")
        suspects = [i for i, _, _ in leased if g.copies[i].suspect]
        if suspects and len(leased) > 1:
            problems.append(
                f"{topic}/{group}: {suspects[0]}, whose lease expired, was handed out with "
                f"other events (invariant 11)"
            )
        for event_id in died:
            c = g.copies[event_id]
            if c.attempts < max_attempts:
                problems.append(
                    f"{topic}/{group}: {event_id} went DEAD after {c.attempts} attempts "
                    f"< max_attempts={max_attempts}"
                )
        for event_id, _, _ in leased:
            c = g.copies[event_id]
            if c.attempts >= max_attempts:
                problems.append(
                    f"{topic}/{group}: {event_id} delivered again after {c.attempts} attempts "
                    f"(max_attempts={max_attempts}, invariant 6)"
                )
        # Adopt the transport's answer so that later steps compare against it.
        for block in g.blocks:
            block -= set(taken)
        for event_id, receipt, deadline in leased:
            c = g.copies[event_id]
            c.state, c.attempts, c.receipt, c.deadline = (
                State.LEASED,
                c.attempts + 1,
                receipt,
                deadline,
            )
        for event_id in died:
            self._die(g, g.copies[event_id], "max_attempts", None, now)
        return problems

    # -- settling ---------------------------------------------------------------------------

    def live(self, receipt: Receipt, now: float) -> ModelCopy | None:
        """The copy ``receipt`` leases right now, or None if the receipt is stale."""
        g = self.group(receipt.topic, receipt.group)
        c = g.copies.get(receipt.event_id) if g else None
        if c is None or c.state is not State.LEASED or c.receipt != receipt or now >= c.deadline:
            return None
        return c

    def ack(self, receipt: Receipt, now: float) -> bool:
        """LEASED -> DONE."""
        c = self.live(receipt, now)
        if c is None:
            return False
        g = self._group_of(receipt)
        del g.copies[c.event_id]
        g.done += 1
        return True

    def nack(self, receipt: Receipt, now: float, delay: float, error: str | None) -> bool:
        """LEASED -> READY (front) or DELAYED; the attempt stays counted."""
        c = self.live(receipt, now)
        if c is None:
            return False
        if error is not None:
            c.error = error
        c.receipt = None
        c.suspect = False
        if delay > 0:
            c.state, c.deadline = State.DELAYED, now + delay
        else:
            c.state = State.READY
            self._group_of(receipt).blocks[0].add(c.event_id)
        return True

    def extend(self, receipt: Receipt, now: float, lease: float) -> bool:
        """A live lease now ends ``lease`` seconds from ``now``, or later if it did already."""
        c = self.live(receipt, now)
        if c is None:
            return False
        c.deadline = max(c.deadline, now + lease)
        return True

    def release(self, receipt: Receipt, now: float) -> bool:
        """LEASED -> READY (front), the attempt of this delivery uncounted."""
        c = self.live(receipt, now)
        if c is None:
            return False
        c.state, c.receipt, c.attempts = State.READY, None, c.attempts - 1
        self._group_of(receipt).blocks[0].add(c.event_id)
        return True

    def kill(self, receipt: Receipt, now: float, reason: str, error: str | None) -> bool:
        """LEASED -> DEAD."""
        c = self.live(receipt, now)
        if c is None:
            return False
        self._die(self._group_of(receipt), c, reason, error, now)
        return True

    # -- dead letters -------------------------------------------------------------------------

    def replay(self, topic: str, group: str, event_ids: Sequence[str] | None) -> int:
        """Dead -> back of READY, attempts and error reset; returns how many."""
        g = self.group(topic, group)
        if g is None:
            return 0
        chosen = [i for i in g.dead if event_ids is None or i in event_ids]
        for event_id in chosen:
            c = g.copies[event_id]
            c.state, c.attempts, c.error, c.reason, c.suspect = State.READY, 0, None, "", False
            g.dead.remove(event_id)
        if chosen:
            g.blocks.append(set(chosen))
        return len(chosen)

    def purge(self, topic: str, group: str, event_ids: Sequence[str] | None) -> int:
        """Dead -> gone for good; returns how many."""
        g = self.group(topic, group)
        if g is None:
            return 0
        chosen = [i for i in g.dead if event_ids is None or i in event_ids]
        for event_id in chosen:
            del g.copies[event_id]
            g.dead.remove(event_id)
            g.done += 1
        return len(chosen)

    # -- internals ------------------------------------------------------------------------------

    def _group_of(self, receipt: Receipt) -> GroupModel:
        g = self.group(receipt.topic, receipt.group)
        assert g is not None
        return g

    @staticmethod
    def _die(g: GroupModel, c: ModelCopy, reason: str, error: str | None, now: float) -> None:
        c.state, c.reason, c.died_at, c.receipt = State.DEAD, reason, now, None
        if error is not None:
            c.error = error
        g.dead.append(c.event_id)
