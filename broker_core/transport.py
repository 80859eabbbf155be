"""The boundary between the broker and a store: the ``Transport`` protocol and its data.

A transport keeps, per topic, the bodies of published events and, per (topic, group), the
delivery state machine of docs/semantics.md::

    publish ──► READY ──claim──► LEASED ──ack──► DONE
                ▲ ▲ │              │
                │ └─┼─expiry/nack0─┤   (back at the FRONT, attempt counted)
                │ └─┼───release────┤   (back at the FRONT, attempt uncounted)
                │   │              ├─nack(delay)──► DELAYED ──due──► READY
                │   │              └─kill: attempts exhausted / undecodable──┐
                │   │                                                        ▼
                │   └─claim finds attempts exhausted (max_attempts)───────► DEAD
                └──────────────────────────replay────────────────────────────┘

Only plain data crosses this boundary: names, event ids, bytes, floats and the frozen
dataclasses below. The core never imports a transport; transports are found through the
plugin hooks in :mod:`broker_core.hooks`. Every method is a coroutine and every state
transition a transport performs must be atomic with respect to every other consumer of
the same store, in any process.

Times are seconds on the transport's clock (see :mod:`broker_core.clock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "DeadLetter",
    "Message",
    "QueueStats",
    "Receipt",
    "TopicStats",
    "Transport",
]


@dataclass(frozen=True, slots=True)
class Receipt:
    """The token of one delivery: which event, for which group, under which lease.

    ``token`` changes with every claim, so a receipt from an earlier delivery of the same
    event is stale and the transport refuses it (fencing).
    """

    topic: str
    group: str
    event_id: str
    token: str

    def __hash__(self) -> int:
        # Equal receipts have equal ids and tokens. Consumers look receipts up several
        # times per event, and hashing two strings (their hashes cached) costs a fraction
        # of the generated hash of a tuple of all four fields.
        return hash(self.event_id) ^ hash(self.token)


@dataclass(frozen=True, slots=True)
class Message:
    """One leased delivery, as a claim hands it out."""

    receipt: Receipt
    body: bytes
    attempt: int
    """1-based count of deliveries of this event to this group, this one included."""
    lease_deadline: float
    """When the lease expires, on the transport's clock."""
    key: str | None = None
    """The event's ordering key, as published (None: it has none)."""
    isolated: bool = False
    """The event's previous lease expired: it may have crashed its consumer.

    Such an event is handed out alone (it is its claim's only message), and the consumer
    runs it alone, so that if it kills its process again it charges no other event an
    attempt (invariant 11).
    """

    @property
    def topic(self) -> str:
        """The topic the event was published to."""
        return self.receipt.topic

    @property
    def group(self) -> str:
        """The group this delivery belongs to."""
        return self.receipt.group

    @property
    def event_id(self) -> str:
        """The published event's id."""
        return self.receipt.event_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a group gave up on, with why."""

    topic: str
    group: str
    event_id: str
    body: bytes
    reason: str
    """Why it died: ``"max_attempts"``, ``"undecodable"``, or what a caller of ``kill`` said."""
    error: str | None
    """The last error seen, e.g. ``"ValueError: bad total"``."""
    attempts: int
    died_at: float
    """When it died, on the transport's clock."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How many of a (topic, group)'s events are in each live state."""

    topic: str
    group: str
    ready: int
    leased: int
    delayed: int
    dead: int
    acked: int | None = field(default=None, compare=False)
    """Events the group has acked since it subscribed, a counter for rates (None: the
    transport does not count them). Not compared: two readings of the same state are
    equal whatever the counters say."""

    @property
    def lag(self) -> int:
        """Events the group has not finished with yet: READY, LEASED or DELAYED."""
        return self.ready + self.leased + self.delayed


@dataclass(frozen=True, slots=True)
class TopicStats:
    """A topic's retention and partitions, and the history it holds for new groups and
    rewinds."""

    topic: str
    max_age: float | None
    """Retention by age, in seconds (None: no age limit)."""
    max_events: int | None
    """Retention by count: the newest this many events (None: no count limit)."""
    retained: int
    """Events readable as history right now (0 for a topic without retention)."""
    oldest_age: float | None
    """Seconds since the oldest retained event was published (None: nothing retained)."""
    published: int | None = field(default=None, compare=False)
    """Events published to the topic (not skipped) so far, a counter for rates (None: the
    transport does not count them; not compared, like :attr:`QueueStats.acked`)."""
    partitions: int = 1
    """How many partitions the topic is spread over (see ``Transport.configure_topic``)."""

    @property
    def retains(self) -> bool:
        """Whether the topic keeps history at all."""
        return self.max_age is not None or self.max_events is not None


@runtime_checkable
class Transport(Protocol):
    """What a store must do to carry events; see the module docstring for the states."""

    @property
    def max_body_bytes(self) -> int | None:
        """The largest body this transport stores, or None for no limit of its own.

        The Broker refuses a larger event before it calls ``publish``, so that a batch
        over several topics is never stored for some topics and refused for others.
        """
        ...

    async def connect(self) -> None:
        """Open connections. Called once before any other method; idempotent."""
        ...

    async def close(self) -> None:
        """Release connections. The stored state survives (for durable stores)."""
        ...

    async def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        """Make ``group`` a durable subscriber of ``topic``; idempotent.

        Events published after this call reach the group; earlier ones do not, except
        with ``history``: a *new* subscription then first receives every event the topic
        retains (see :meth:`configure_topic`) that was published at most ``history``
        seconds ago (``math.inf``: all of them), oldest first, before any event published
        later (invariant 9). A store may copy a long history in bounded steps; the
        subscription then joins the topic's groups when the copy has caught up, and a
        copy cut short by a crash goes on at the group's next ``subscribe`` or claim. With
        ``ordered=True`` the group is *ordered*: of the events of one ordering key it only
        ever leases the earliest not yet DONE or DEAD, and only once that one is READY,
        so a key's events are handled one at a time in publish order, through retries
        and expiries (invariant 8); unkeyed events and other keys go on meanwhile. A
        subscription keeps the options it was created with: ``ordered=None`` keeps them
        (``False`` for a new one), and another explicit value raises
        :class:`~broker_core.errors.SubscriptionMismatch`, changing nothing.
        """
        ...

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """End ``group``'s subscription to ``topic`` and drop its copy of every event.

        Every event the group holds, in any state (READY, LEASED, DELAYED or DEAD, and
        those of an ordered group waiting for their key's turn), is forgotten as if the
        group were done with it: a body neither another group nor the topic's history
        holds is freed, and its id may be published anew (after its dedup window). A
        group still receiving the history (subscribe with ``history``, rewind) counts as
        subscribed, and gets no more of it. Receipts of the group become stale;
        other groups are untouched (invariant 7). Events published afterwards do not
        reach the group; subscribing again starts afresh, with new options. Idempotent:
        returns whether the group was subscribed.
        """
        ...

    async def configure_topic(
        self,
        topic: str,
        *,
        max_age: float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """Store ``topic``'s retention and partition count, shared by every process of the
        store.

        With retention, each event published to the topic is also appended to its
        history, which keeps it readable (for :meth:`subscribe` with ``history`` and for
        :meth:`rewind`) after every group is done with it, until it is ``max_age``
        seconds old or no longer among the newest ``max_events`` events of the history.
        The topic holds a retained event's id as a group does: publishing the id again
        is skipped. Both None (the default of every topic) retains nothing, except in a
        call that gives ``partitions``: a count alone keeps the retention. Trimming is
        the store's own, bounded work per call; what it has yet to trim is never read.

        ``partitions`` (1 to :data:`~broker_core.partitions.MAX_PARTITIONS`; None keeps
        the topic's count, 1 for a new topic) spreads the topic over that many
        partitions, which a store may keep apart (one Redis Cluster slot each) or not at
        all. Each event joins the partition :func:`~broker_core.partitions.partition_of`
        names, so queue order holds within each partition (for the events of one key,
        which share one) and not between them (invariant 12). A change of the count is
        refused with :class:`~broker_core.errors.PartitionChangeRefused`, changing
        nothing, while any group holds an event of the topic or its history retains
        one; the groups subscribed stay subscribed across a change, and the topic's
        dedup windows are forgotten (a store keeping partitions apart loses them with
        the old layout).
        """
        ...

    async def topic_stats(self, topic: str) -> TopicStats:
        """``topic``'s retention, how many events it retains and how old the oldest is."""
        ...

    async def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """Deliver the retained events published at most ``history`` seconds ago (``math.inf``:
        all of them) to ``group`` again, oldest first, as fresh deliveries at the back of
        its queue; returns how many.

        An event the group still holds (READY, LEASED, DELAYED or DEAD) is skipped: it
        is delivered anyway; events published meanwhile come after the rewound ones. A
        store may copy in bounded steps as for :meth:`subscribe`. With ``dry_run``
        nothing changes and the count is of what would be delivered now. Raises
        ValueError if ``group`` does not subscribe ``topic``.
        """
        ...

    async def groups(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic``, sorted."""
        ...

    async def topics(self) -> list[str]:
        """Every topic that has at least one subscribed group, sorted."""
        ...

    async def publish(
        self,
        topic: str,
        events: Sequence[tuple[str, bytes]],
        *,
        keys: Sequence[str | None] | None = None,
        dedup_window: float = 0.0,
        connection: object | None = None,
    ) -> int:
        """Append ``(event_id, body)`` pairs, in order, to the READY queue of every group.

        ``keys`` holds each event's ordering key (None: no key), in the order of
        ``events``; None means no event has one. A claim hands each event out with its
        key (:attr:`Message.key`).

        All of one call's events become visible atomically. An event is skipped when the
        topic still holds its id (some group is not done with it, or the topic's history
        retains it), or when its id was published to the topic less than the
        ``dedup_window`` it was published with ago (in seconds on the transport's clock),
        even if every group is done with it since (invariant 10). A skipped duplicate does
        not extend that window. Ids are recorded only while the topic has subscribers or
        retention. An event that is not skipped joins the topic's history if it has
        retention. Returns the number of copies enqueued: events not skipped, times the
        groups subscribed (0 when none; not an error).

        ``connection`` is a caller's open connection to the transport's own store (an
        asyncpg connection for PostgreSQL): the events are then written in the caller's
        transaction, and exist only if it commits (transactional publish). A transport
        that cannot do that raises TypeError, naming itself, when one is given; the
        Broker passes the argument only when its caller did.
        """
        ...

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        """Lease up to ``max_count`` READY events of ``group`` from ``topics``.

        First, events whose lease has expired go back to the front of READY and DELAYED
        events that are due become READY. Each claimed event's attempt count goes up by
        one atomically with the claim; an event that would exceed ``max_attempts`` goes
        to DEAD (reason ``"max_attempts"``) instead of being handed out. Events of one
        topic come out in queue order. Returns at once, possibly empty.

        An event whose last lease *expired* (rather than being nacked or released) comes
        out alone, marked :attr:`Message.isolated`: as the only message of a claim that
        finds it first, while a claim that already took other events stops before it.
        It stays marked until a delivery of it is nacked, so a release keeps the mark.
        """
        ...

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """Block until ``group`` may have work in ``topics``, at most ``timeout`` seconds.

        Returns True when woken by new work, False on timeout. Spurious wake-ups are
        allowed; a publish must wake a waiter promptly, and a waiter must not sleep
        past the next lease expiry or due retry it knows of.
        """
        ...

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Mark each leased event DONE. Per receipt: True, or False if it was stale."""
        ...

    async def nack(self, receipt: Receipt, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Give a leased event back: to the front of READY, or to DELAYED for ``delay`` s.

        The attempt stays counted. Returns False (and changes nothing) if stale.
        """
        ...

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        """Make each live lease last at least ``lease`` seconds from now; False where stale.

        A lease never gets shorter: its deadline becomes the later of the current one and
        now + ``lease``. A consumer's local idea of its lease therefore never outlives the
        store's (fencing).
        """
        ...

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        """Give leased events back to the front of READY, this delivery's attempt uncounted.

        For a consumer that stops before it could handle them: that is no failed attempt
        (invariant 11). Per receipt: True, or False (and no change) if it was stale.
        """
        ...

    async def kill(self, receipt: Receipt, *, reason: str, error: str | None = None) -> bool:
        """Move a leased event to DEAD with ``reason``; False (no change) if stale."""
        ...

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead events of (topic, group), oldest death first.

        ``offset`` skips that many of the oldest first, so that a long list is read a
        page at a time without loading it all; pages are positions, not a snapshot, so a
        death, replay or purge between two calls shifts the later pages.
        """
        ...

    async def replay_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead events (all, or those listed) to the back of READY, attempts reset.

        Returns how many moved.
        """
        ...

    async def purge_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead events (all, or those listed) for good; returns how many."""
        ...

    async def stats(self, topic: str, group: str) -> QueueStats:
        """Counts of READY, LEASED, DELAYED and DEAD events of (topic, group).

        Like ``claim``, it first returns expired leases to READY and makes due DELAYED
        events READY, so the counts describe the state machine at the current time.
        """
        ...


def checked_results(
    results: Sequence[bool], receipts: Sequence[Receipt], call: str
) -> Sequence[bool]:
    """``results`` of ``call`` (``"ack"``, ``"extend"``, ...), checked to hold one per receipt.

    A transport answering a batch with another count has a bug; this raises RuntimeError,
    saying so, rather than letting the answers be paired with the wrong receipts.
    """
    if len(results) != len(receipts):
        raise RuntimeError(
            f"the transport's {call} returned {len(results)} results for {len(receipts)} "
            "receipts (one per receipt, in order, is the protocol)"
        )
    return results
