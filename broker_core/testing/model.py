"""A pure model of the delivery state machine, per (event, group); no I/O, no clock.

The model is what the state machine test holds a transport to. It is deliberately only
as strict as docs/semantics.md: where the protocol leaves a choice open it accepts every
allowed answer and then adopts the transport's (see :meth:`DeliveryModel.take`).

READY order is kept as a list of blocks. Block 0 is the *redelivery pool*: events back
from an expired lease, an immediate nack or a due delay, all of which go to the front of
the queue, in an order the protocol does not fix. The following blocks come in queue
order: one block per first delivery (publish order) and one per ``replay_dead`` call
(the replayed events, in an unspecified order among themselves). A claim must take from
the first non-empty block before any later one. On a partitioned topic these rules hold
within each partition (invariant 12): each partition's blocks are the blocks' events of
that partition.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from broker_core.partitions import partition_of
from broker_core.transport import Receipt

__all__ = ["DeliveryModel", "GroupModel", "LogEntry", "ModelCopy", "State"]


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
    seq: int = 0
    """When it joined its key's history: publish order, and a replay counts as new."""


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
    ordered: bool = False
    """An ordered group: of each key, only the earliest live event may be leased."""
    waiting: set[str] = field(default_factory=set)
    """Ordered groups: READY events behind an earlier live event of their key. They are in
    no block: each joins the back of the queue once its key's earlier events are done."""
    partitions: int = 1
    """The topic's partition count: queue order holds within each partition."""

    def counts(self) -> tuple[int, int, int, int]:
        """READY, LEASED, DELAYED and DEAD counts."""
        by_state = {s: 0 for s in State}
        for c in self.copies.values():
            by_state[c.state] += 1
        ready = sum(len(b) for b in self.blocks) + len(self.waiting)
        assert ready == by_state[State.READY], "model: READY blocks out of step with copies"
        assert len(self.dead) == by_state[State.DEAD], "model: dead list out of step"
        return ready, by_state[State.LEASED], by_state[State.DELAYED], len(self.dead)

    def ready_ids(self) -> set[str]:
        """Every READY event id."""
        return set().union(*self.blocks) | self.waiting

    def behind_its_key(self, c: ModelCopy) -> bool:
        """Whether an ordered group holds an earlier live event of ``c``'s key."""
        return (
            self.ordered
            and c.key is not None
            and any(
                o.key == c.key and o.seq < c.seq and o.state is not State.DEAD
                for o in self.copies.values()
            )
        )

    def pass_key(self, c: ModelCopy) -> None:
        """``c`` is DONE or DEAD: its key's next waiting event joins the back of the queue."""
        if not self.ordered or c.key is None:
            return
        behind = [self.copies[i] for i in self.waiting if self.copies[i].key == c.key]
        if behind:
            next_one = min(behind, key=lambda o: o.seq)
            self.waiting.discard(next_one.event_id)
            self.blocks.append({next_one.event_id})

    def partition(self, event_id: str) -> int:
        """The partition of the copy of ``event_id``."""
        c = self.copies[event_id]
        return partition_of(c.event_id, c.key, self.partitions)

    def partition_blocks(self) -> list[list[set[str]]]:
        """Per partition, the blocks restricted to its events (one list for one partition)."""
        if self.partitions == 1:
            return [self.blocks]
        parts: list[list[set[str]]] = [[set() for _ in self.blocks] for _ in range(self.partitions)]
        for n, block in enumerate(self.blocks):
            for i in block:
                parts[self.partition(i)][n].add(i)
        return parts

    def front(self) -> set[str]:
        """The events a claim may take next: each partition's first non-empty block."""
        return set().union(
            *(next((b for b in blocks if b), set()) for blocks in self.partition_blocks())
        )

    def heads(self, excluding: Iterable[str] = ()) -> dict[str, str]:
        """Per ordering key, its earliest copy neither DONE nor DEAD (nor in ``excluding``)."""
        skip = set(excluding)
        heads: dict[str, ModelCopy] = {}
        for c in self.copies.values():
            if c.key is None or c.state is State.DEAD or c.event_id in skip:
                continue
            if c.key not in heads or c.seq < heads[c.key].seq:
                heads[c.key] = c
        return {key: c.event_id for key, c in heads.items()}

    def claimable(self, excluding: Iterable[str] = ()) -> set[str]:
        """The READY events a claim may take: in an ordered group, unkeyed ones and the
        READY heads of their keys (invariant 8); in any other, every READY one."""
        ready = self.ready_ids()
        if not self.ordered:
            return ready
        heads = set(self.heads(excluding).values())
        return {i for i in ready if self.copies[i].key is None or i in heads}

    def suspect_in_front(self) -> bool:
        """Whether a claim may stop here: it reached an event that must go out alone."""
        if self.ordered:
            return any(self.copies[i].suspect for i in self.claimable())
        return any(self.copies[i].suspect for i in self.front())


@dataclass(frozen=True)
class LogEntry:
    """One event in a topic's history (retention)."""

    position: int
    """1, 2, ... in the order the topic's history received its events."""
    event_id: str
    body: bytes
    key: str | None
    published_at: float


class DeliveryModel:
    """Topics, their subscribed groups, and every group's copies; time passed in explicitly.

    Methods that settle a delivery (``ack``, ``nack``, ``extend``, ``kill``) return what a
    correct transport returns: False, with nothing changed, for a stale receipt.
    """

    def __init__(self) -> None:
        self.topics: dict[str, dict[str, GroupModel]] = {}
        self.windows: dict[str, dict[str, float]] = {}
        """Per topic, event id -> end of its dedup window."""
        self.retention: dict[str, tuple[float | None, int | None]] = {}
        """Per topic with retention: (max_age, max_events)."""
        self.logs: dict[str, list[LogEntry]] = {}
        """Per topic, its history, oldest first; entries past retention are dropped by
        :meth:`retained` as soon as anything looks."""
        self.partitions: dict[str, int] = {}
        """Per topic with more than one partition, its count."""
        self._positions: dict[str, int] = {}
        self._seq = itertools.count(1)

    # -- subscriptions and publish --------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        group: str,
        ordered: bool | None = None,
        history: float | None = None,
        now: float = 0.0,
    ) -> bool:
        """Subscribe ``group``; it sees events published from now on and, when it is new
        and ``history`` is given, first the retained ones at most ``history`` s old.

        Returns False, changing nothing, when ``ordered`` contradicts the options the
        subscription was created with (the transport raises SubscriptionMismatch then).
        """
        existing = self.group(topic, group)
        if existing is not None:
            return ordered is None or ordered == existing.ordered
        g = self.topics.setdefault(topic, {})[group] = GroupModel(
            ordered=bool(ordered), partitions=self.partitions.get(topic, 1)
        )
        if history is not None:
            self._deliver_history(g, topic, history, now)
        return True

    def unsubscribe(self, topic: str, group: str) -> bool:
        """End the subscription: the group's copies go, in whatever state (so its ids are
        free once no other group holds them) and its receipts are stale. Returns whether
        it was subscribed."""
        groups = self.topics.get(topic, {})
        if groups.pop(group, None) is None:
            return False
        if not groups:
            del self.topics[topic]  # topics() lists only topics with groups
        return True

    # -- retention and history -----------------------------------------------------------

    def configure(
        self,
        topic: str,
        max_age: float | None,
        max_events: int | None,
        now: float,
        partitions: int | None = None,
    ) -> bool:
        """Set (or, with both None, remove) ``topic``'s retention, and set its partition
        count unless ``partitions`` is None.

        Returns False, changing nothing, for a change of the count while the topic holds
        an event (a group's copy in any state, or a retained one): the transport raises
        PartitionChangeRefused then. A change forgets the topic's dedup windows.
        """
        if partitions is not None and partitions != self.partitions.get(topic, 1):
            groups = self.topics.get(topic, {}).values()
            if any(g.copies for g in groups) or self.retained(topic, now):
                return False
            self.windows.pop(topic, None)
            for g in groups:
                g.partitions = partitions
            if partitions == 1:
                del self.partitions[topic]
            else:
                self.partitions[topic] = partitions
        if max_age is None and max_events is None:
            self.retention.pop(topic, None)
        else:
            self.retention[topic] = (max_age, max_events)
        self.retained(topic, now)
        return True

    def retained(self, topic: str, now: float) -> list[LogEntry]:
        """``topic``'s history at ``now``, oldest first (trimmed to its retention)."""
        log = self.logs.get(topic, [])
        if topic not in self.retention:
            log.clear()
            return log
        max_age, max_events = self.retention[topic]
        newest = self._positions.get(topic, 0)
        log[:] = [
            e
            for e in log
            if (max_age is None or now < e.published_at + max_age)
            and (max_events is None or e.position > newest - max_events)
        ]
        return log

    def rewind(
        self, topic: str, group: str, history: float, now: float, dry_run: bool = False
    ) -> int | None:
        """The group gets the retained events at most ``history`` s old again, those it
        holds left out; returns how many, or None if it does not subscribe ``topic``.

        With ``dry_run`` only the count, and nothing changes."""
        g = self.group(topic, group)
        if g is None:
            return None
        if dry_run:
            return len(self._history_for(g, topic, history, now))
        return self._deliver_history(g, topic, history, now)

    def topic_stats(self, topic: str, now: float) -> tuple[int, float | None]:
        """How many events ``topic`` retains, and the age of the oldest (None if none)."""
        log = self.retained(topic, now)
        return len(log), (now - log[0].published_at if log else None)

    def _history_for(self, g: GroupModel, topic: str, history: float, now: float) -> list[LogEntry]:
        return [
            e
            for e in self.retained(topic, now)
            if e.published_at >= now - history and e.event_id not in g.copies
        ]

    def _deliver_history(self, g: GroupModel, topic: str, history: float, now: float) -> int:
        entries = self._history_for(g, topic, history, now)
        for e in entries:
            self._enqueue(g, ModelCopy(e.event_id, e.body, e.key, seq=next(self._seq)))
        return len(entries)

    @staticmethod
    def _enqueue(g: GroupModel, c: ModelCopy) -> None:
        g.copies[c.event_id] = c
        if g.behind_its_key(c):
            g.waiting.add(c.event_id)
        else:
            g.blocks.append({c.event_id})

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

    def held(self, topic: str, event_id: str, now: float = 0.0) -> bool:
        """Whether some group of ``topic`` still holds ``event_id`` (it is not DONE), or
        the topic's history retains it."""
        return any(event_id in g.copies for g in self.topics.get(topic, {}).values()) or any(
            e.event_id == event_id for e in self.retained(topic, now)
        )

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
        retains = topic in self.retention
        added = 0
        for i, (event_id, body) in enumerate(events):
            if not (groups or retains) or self.held(topic, event_id, now):
                continue
            if windows.get(event_id, float("-inf")) > now:
                continue
            if dedup_window > 0:
                windows[event_id] = now + dedup_window
            added += 1
            key = None if keys is None else keys[i]
            if retains:
                position = self._positions[topic] = self._positions.get(topic, 0) + 1
                log = self.logs.setdefault(topic, [])
                log.append(LogEntry(position, event_id, body, key, now))
            seq = next(self._seq)
            for g in groups.values():
                self._enqueue(g, ModelCopy(event_id, body, key, seq=seq))
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
        for event_id in died:
            c = g.copies[event_id]
            if c.attempts < max_attempts:
                problems.append(
                    f"{topic}/{group}: {event_id} went DEAD after {c.attempts} attempts "
                    f"< max_attempts={max_attempts}"
                )
        if g.ordered:
            problems += self._take_ordered(topic, group, g, leased, died)
            # A burial lets its key's next event join the back of the queue, where this
            # claim may still reach it: the deaths go first, then the leased events must
            # be the front of what is left (invariant 5 among what may be claimed).
            for event_id in died:
                for block in g.blocks:
                    block.discard(event_id)
                self._die(g, g.copies[event_id], "max_attempts", None, now)
            problems += self._take_in_queue_order(
                topic, group, g, leased, [i for i, _, _ in leased]
            )
            died = []
        else:
            problems += self._take_in_queue_order(topic, group, g, leased, taken)
        for event_id, _, _ in leased:
            c = g.copies[event_id]
            if c.attempts >= max_attempts:
                problems.append(
                    f"{topic}/{group}: {event_id} delivered again after {c.attempts} attempts "
                    f"(max_attempts={max_attempts}, invariant 6)"
                )
        suspects = [i for i, _, _ in leased if g.copies[i].suspect]
        if suspects and len(leased) > 1:
            problems.append(
                f"{topic}/{group}: {suspects[0]}, whose lease expired, was handed out with "
                f"other events (invariant 11)"
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

    @staticmethod
    def _take_ordered(
        topic: str,
        group: str,
        g: GroupModel,
        leased: Sequence[tuple[str, Receipt, float]],
        died: Sequence[str],
    ) -> list[str]:
        """An ordered group's claim takes only heads of keys (invariant 8).

        A burial makes the next event of its key the head, so each event is checked
        with the events that died before it in this claim left out.
        """
        problems = []
        for n, event_id in enumerate(died):
            if event_id not in g.claimable(excluding=died[:n]):
                problems.append(
                    f"{topic}/{group}: claim buried {event_id}, not the head of key "
                    f"{g.copies[event_id].key!r} (invariant 8)"
                )
        allowed = g.claimable(excluding=died)
        keys = [g.copies[i].key for i, _, _ in leased if g.copies[i].key is not None]
        for event_id, _, _ in leased:
            if event_id not in allowed:
                c = g.copies[event_id]
                problems.append(
                    f"{topic}/{group}: leased {event_id} of key {c.key!r} while an earlier "
                    f"event of that key is not done (invariant 8)"
                )
        if len(set(keys)) != len(keys):
            problems.append(f"{topic}/{group}: one claim leased two events of one key: {keys}")
        return problems

    @staticmethod
    def _take_in_queue_order(
        topic: str,
        group: str,
        g: GroupModel,
        leased: Sequence[tuple[str, Receipt, float]],
        taken: Sequence[str],
    ) -> list[str]:
        """Any other group's claim takes the front of its queue (invariant 5), of each
        partition's queue on a partitioned topic (invariant 12)."""
        waiting = [i for i, _, _ in leased if i in g.waiting]
        if waiting:
            return [f"{topic}/{group}: claim took {waiting}, waiting behind their keys"]
        problems = []
        for blocks in g.partition_blocks():
            ids = set().union(*blocks)
            problems += DeliveryModel._take_in_blocks(
                topic,
                group,
                blocks,
                [e for e in leased if e[0] in ids],
                [i for i in taken if i in ids],
            )
        return problems

    @staticmethod
    def _take_in_blocks(
        topic: str,
        group: str,
        blocks: list[set[str]],
        leased: Sequence[tuple[str, Receipt, float]],
        taken: Sequence[str],
    ) -> list[str]:
        """A claim takes a prefix of one queue's blocks, in block order."""
        problems = []
        # The taken events must be a prefix of the queue: whole blocks, then part of one.
        rest = set(taken)
        for block in blocks:
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
        index = {i: n for n, b in enumerate(blocks) for i in b}
        order = [index[i] for i, _, _ in leased]
        if order != sorted(order):
            problems.append(f"{topic}/{group}: claim returned events out of queue order")
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
        g.pass_key(c)
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
        block: set[str] = set()
        for event_id in chosen:
            c = g.copies[event_id]
            c.state, c.attempts, c.error, c.reason, c.suspect = State.READY, 0, None, "", False
            c.seq = next(self._seq)  # the back of its key's history
            g.dead.remove(event_id)
            if g.behind_its_key(c):
                g.waiting.add(event_id)
            else:
                block.add(event_id)
        if block:
            g.blocks.append(block)
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
        g.pass_key(c)
