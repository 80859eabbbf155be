"""The in-memory transport: the executable reference of the delivery state machine.

One :class:`MemoryStore` holds every topic, group and event; :class:`MemoryTransport` is
the :class:`~broker_core.transport.Transport` view of a store. Several transports (and so
several brokers, groups and consumers in one process) share a store, and
``memory://name`` URLs name process-wide stores through :func:`named_store`.

Choices the protocol leaves open, made here and relied on by nobody else:

- Expired leases and due DELAYED events both go back to the FRONT of READY
  (docs/semantics.md, invariant 5: redeliveries go to the front). When several become
  READY at once, the one that expired or fell due first comes out first.
- ``replay_dead`` appends to the back of READY in the order the events died.
- A nack or kill without ``error`` keeps the last error recorded for the event, so a dead
  letter carries the last error seen.
- ``claim`` takes from ``topics`` in the given order; a caller wanting fairness across
  topics rotates the list.

Cost per event is O(1) except lease and delay bookkeeping, which are O(log n) heap
operations; nothing runs per event in the background. Expired leases are found lazily,
by ``claim``, ``stats`` and ``wait``, from a heap of deadlines whose stale entries (acked
or extended leases) are skipped and compacted away.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import math
import threading
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from heapq import heapify, heappop, heappush
from itertools import islice

from broker_core.clock import Clock, MonotonicClock
from broker_core.errors import SubscriptionMismatch
from broker_core.names import validate_group, validate_key, validate_topic
from broker_core.partitions import partition_change_refused, validate_partitions
from broker_core.retention import validate_history, validate_retention
from broker_core.text import safe_text
from broker_core.transport import DeadLetter, Message, QueueStats, Receipt, TopicStats

__all__ = ["MemoryStore", "MemoryTransport", "forget_store", "named_store"]


class _State(enum.Enum):
    READY = 1
    LEASED = 2
    DELAYED = 3
    DEAD = 4


class _Copy:
    """One group's copy of one event; it exists until the copy is DONE (then it is dropped)."""

    __slots__ = (
        "attempts",
        "body",
        "deadline",
        "died_at",
        "error",
        "event_id",
        "heap_key",
        "key",
        "reason",
        "state",
        "suspect",
        "token",
    )

    def __init__(self, event_id: str, body: bytes, key: str | None = None) -> None:
        self.event_id = event_id
        self.body = body  # the same bytes object for every group: stored once per topic
        self.key = key
        self.state = _State.READY
        self.attempts = 0
        self.token = ""
        self.deadline = 0.0  # lease deadline while LEASED
        # Identifies this copy's one valid entry in a lease or delay heap; older entries
        # (from an earlier lease, or before an extend) carry another key and are skipped.
        self.heap_key = 0
        self.error: str | None = None
        self.reason = ""
        self.died_at = 0.0
        # Its last lease expired: handed out alone until a delivery of it is nacked.
        self.suspect = False


# (time, heap key, copy): heap keys are unique, so copies themselves are never compared.
_HeapItem = tuple[float, int, _Copy]

# Rebuild a lease heap once stale entries outnumber live leases this many times over.
_COMPACT_FACTOR = 4
_COMPACT_MIN = 256


class _Queue:
    """The state machine of one (topic, group)."""

    __slots__ = (
        "acked",
        "copies",
        "dead",
        "delayed",
        "lanes",
        "lease_heap",
        "leased",
        "ordered",
        "ready",
        "waiting",
    )

    def __init__(self, ordered: bool = False) -> None:
        self.acked = 0  # a counter, for rates
        self.copies: dict[str, _Copy] = {}  # every copy not DONE, by event id
        # The copies a claim may take: for an ordered group, only the head of each key.
        self.ready: deque[_Copy] = deque()
        self.ordered = ordered
        # Ordered groups: per key, its copies neither DONE nor DEAD, in publish order. The
        # head is READY (in ``ready``), LEASED or DELAYED; the others wait, READY but not
        # claimable, and are counted in ``waiting``.
        self.lanes: dict[str, deque[_Copy]] = {}
        self.waiting = 0
        self.leased = 0
        self.lease_heap: list[_HeapItem] = []  # may hold stale entries
        self.delayed: list[_HeapItem] = []  # exact: a DELAYED copy only leaves when due
        self.dead: dict[str, _Copy] = {}  # insertion order is death order

    def enqueue(self, c: _Copy) -> None:
        """A new READY copy (published or replayed) joins the back of its queue."""
        if self.ordered and c.key is not None:
            lane = self.lanes.get(c.key)
            if lane:
                lane.append(c)
                self.waiting += 1
                return
            self.lanes[c.key] = deque([c])
        self.ready.append(c)

    def leave_lane(self, c: _Copy) -> bool:
        """``c`` is DONE or DEAD: the next copy of its key becomes claimable.

        Returns whether a copy did.
        """
        key = c.key
        lane = self.lanes.get(key) if self.ordered and key is not None else None
        if key is None or lane is None or lane[0] is not c:
            return False  # only a key's head ever leaves; nothing else moves its key
        lane.popleft()
        if not lane:
            del self.lanes[key]
            return False
        self.waiting -= 1
        self.ready.append(lane[0])
        return True

    def next_due(self) -> float:
        """The earliest lease deadline or due time, after dropping stale heap tops."""
        heap = self.lease_heap
        while heap and heap[0][2].heap_key != heap[0][1]:
            heappop(heap)
        first = heap[0][0] if heap else math.inf
        return min(first, self.delayed[0][0]) if self.delayed else first


class _Entry:
    """One event in a topic's history."""

    __slots__ = ("body", "event_id", "key", "position", "published_at", "trimmed")

    def __init__(
        self, position: int, event_id: str, body: bytes, key: str | None, published_at: float
    ) -> None:
        self.position = position
        self.event_id = event_id
        self.body = body
        self.key = key
        self.published_at = published_at
        # Dropped out of order (see _Topic.still_held); the trimming skips it.
        self.trimmed = False


# Entries of a history trimmed per publish or claim, besides those the call adds: bounded
# work per call, and yet a history never lags behind its retention for long.
_TRIM_BUDGET = 64


class _Topic:
    """One topic: its groups' queues, what holds each id, dedup windows and history."""

    __slots__ = (
        "groups",
        "held",
        "log",
        "logged",
        "max_age",
        "max_events",
        "partitions",
        "position",
        "published",
        "published_count",
        "windows",
    )

    def __init__(self) -> None:
        self.groups: dict[str, _Queue] = {}
        # How many groups still hold each event id (not DONE), plus one while the history
        # retains it: the id is skipped by publish, and its body kept, while above zero.
        self.held: dict[str, int] = {}
        # Retention (both None: none) and the history, oldest first; ``logged`` finds
        # an event's entry by id and ``position`` counts the entries ever appended.
        self.max_age: float | None = None
        self.max_events: int | None = None
        self.log: deque[_Entry] = deque()
        self.logged: dict[str, _Entry] = {}
        self.position = 0
        self.published_count = 0  # events not skipped, for rates
        # Only stored: one queue per group keeps every partition's order (invariant 12).
        self.partitions = 1
        # Event id -> end of its dedup window; ``windows`` holds the same as a heap by
        # end (publishers may use different windows), so that ended windows are
        # forgotten a few per publish, earliest end first.
        self.published: dict[str, float] = {}
        self.windows: list[tuple[float, str]] = []

    @property
    def retains(self) -> bool:
        """Whether the topic has retention: published events join its history."""
        return self.max_age is not None or self.max_events is not None

    def expired(self, e: _Entry, now: float) -> bool:
        """Whether retention no longer covers ``e``: it is never read again."""
        return (
            not self.retains
            or (self.max_age is not None and now >= e.published_at + self.max_age)
            or (self.max_events is not None and e.position <= self.position - self.max_events)
        )

    def trim(self, now: float, budget: float) -> None:
        """Drop up to ``budget`` expired entries of the history, the oldest first.

        Retention only ever expires the oldest entries first, so the expired ones are a
        prefix of the history (apart from those still_held dropped already).
        """
        log = self.log
        while budget > 0 and log and (log[0].trimmed or self.expired(log[0], now)):
            e = log.popleft()
            budget -= 1
            if not e.trimmed:
                self._unlog(e)

    def retained(self, now: float) -> list[_Entry]:
        """The history at ``now``, oldest first."""
        self.trim(now, math.inf)
        return [e for e in self.log if not e.trimmed]

    def still_held(self, event_id: str, now: float) -> bool:
        """Whether the topic holds ``event_id``: a group does, or the history retains it.

        An entry retention no longer covers but the trimming has yet to reach holds
        nothing: it is dropped here, out of order.
        """
        if event_id not in self.held:
            return False
        e = self.logged.get(event_id)
        if e is None or self.held[event_id] > 1 or not self.expired(e, now):
            return True
        e.trimmed = True
        self._unlog(e)
        return False

    def append(self, event_id: str, body: bytes, key: str | None, now: float) -> None:
        """A published event joins the history, which holds its id from now on."""
        self.position += 1
        e = _Entry(self.position, event_id, body, key, now)
        self.log.append(e)
        self.logged[event_id] = e
        self.held[event_id] = self.held.get(event_id, 0) + 1

    def release(self, event_id: str) -> None:
        """One holder (a group, or the history) is done with ``event_id``."""
        left = self.held[event_id] - 1
        if left:
            self.held[event_id] = left
        else:
            del self.held[event_id]  # nobody holds it: the id may be published anew

    def _unlog(self, e: _Entry) -> None:
        del self.logged[e.event_id]
        self.release(e.event_id)

    def forget_windows(self, now: float, budget: int) -> None:
        """Drop up to ``budget`` ended dedup windows, the earliest ended first."""
        windows, published = self.windows, self.published
        while budget > 0 and windows and windows[0][0] <= now:
            ends, event_id = heappop(windows)
            if published.get(event_id) == ends:
                del published[event_id]
            budget -= 1


class _Waiter:
    __slots__ = ("future", "loop", "topics", "wake_at")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[bool],
        topics: frozenset[str],
        wake_at: float,
    ) -> None:
        self.loop = loop
        self.future = future
        self.topics = topics
        self.wake_at = wake_at  # store-clock time the waiter will wake at by itself

    def wake(self, work: bool) -> None:
        # The waiter may sit on another thread's loop; a loop that has closed since has
        # nobody left to wake.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, self.future, work)


def _resolve(future: asyncio.Future[bool], work: bool) -> None:
    if not future.done():
        future.set_result(work)


class MemoryStore:
    """Every topic, group and event of one in-memory broker world, read against ``clock``.

    Every method but the coroutine :meth:`wait` is synchronous, and each is one atomic
    transition (a lock makes that hold across threads too). :class:`MemoryTransport`
    exposes them as the Transport protocol. The store keeps no asyncio objects, so it
    outlives event loops.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self._topics: dict[str, _Topic] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        # Tokens must not collide with another store's, whose receipts could be presented.
        self._token_prefix = uuid.uuid4().hex[:8] + ":"
        self._waiters: dict[str, set[_Waiter]] = {}

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        """See :meth:`broker_core.transport.Transport.subscribe`.

        A history is copied at once: memory is no shared store that a long copy blocks.
        """
        validate_topic(topic)
        validate_group(group)
        validate_history(history)
        with self._lock:
            t = self._topic(topic)
            q = t.groups.get(group)
            if q is None:
                q = t.groups[group] = _Queue(ordered=bool(ordered))
                if history is not None and self._deliver_history(t, q, history):
                    self._notify(group, topic, work=True)
            elif ordered is not None and ordered != q.ordered:
                raise SubscriptionMismatch(
                    f"group {group!r} subscribed to {topic!r} with ordered={q.ordered}: "
                    f"subscribe again without options or with ordered={q.ordered} (a "
                    "subscription keeps the options it was created with)"
                )

    def unsubscribe(self, topic: str, group: str) -> bool:
        """See :meth:`broker_core.transport.Transport.unsubscribe`."""
        validate_topic(topic)
        validate_group(group)
        with self._lock:
            t = self._topics.get(topic)
            q = t.groups.pop(group, None) if t else None
            if t is None or q is None:
                return False
            # Receipts of the group are stale from here on: no queue answers for them.
            for c in list(q.copies.values()):
                self._done(topic, q, c)
            return True

    def configure_topic(
        self,
        topic: str,
        *,
        max_age: float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """See :meth:`broker_core.transport.Transport.configure_topic`."""
        validate_topic(topic)
        validate_retention(max_age, max_events)
        if partitions is not None:
            validate_partitions(partitions)
        with self._lock:
            t = self._topic(topic)
            now = self.clock.now()
            if partitions is not None and partitions != t.partitions:
                self._check_empty(topic, t, partitions, now)
                t.partitions = partitions
                # A store that keeps partitions apart loses them with the old layout.
                t.published.clear()
                t.windows.clear()
            t.max_age, t.max_events = max_age, max_events
            t.trim(now, math.inf)

    def _check_empty(self, topic: str, t: _Topic, partitions: int, now: float) -> None:
        """Refuse a partition change while ``t`` holds an event (see configure_topic)."""
        for group, q in sorted(t.groups.items()):
            if q.copies:
                holding = f"group {group!r} holds {len(q.copies)} of its events"
                raise partition_change_refused(topic, t.partitions, partitions, holding)
        if retained := len(t.retained(now)):
            holding = f"its history retains {retained} events"
            raise partition_change_refused(topic, t.partitions, partitions, holding)

    def topic_stats(self, topic: str) -> TopicStats:
        """See :meth:`broker_core.transport.Transport.topic_stats`."""
        validate_topic(topic)
        with self._lock:
            t = self._topics.get(topic)
            if t is None:
                return TopicStats(topic, None, None, 0, None, 0)
            now = self.clock.now()
            log = t.retained(now)
            oldest = now - log[0].published_at if log else None
            return TopicStats(
                topic,
                t.max_age,
                t.max_events,
                len(log),
                oldest,
                t.published_count,
                t.partitions,
            )

    def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """See :meth:`broker_core.transport.Transport.rewind`."""
        validate_topic(topic)
        validate_group(group)
        validate_history(history, optional=False)
        with self._lock:
            t = self._topics.get(topic)
            q = t.groups.get(group) if t else None
            if t is None or q is None:
                raise ValueError(f"group {group!r} does not subscribe {topic!r}: nothing to rewind")
            if dry_run:
                return len(self._history_for(t, q, history))
            count = self._deliver_history(t, q, history)
            if count:
                self._notify(group, topic, work=True)
            return count

    def _history_for(self, t: _Topic, q: _Queue, history: float) -> list[_Entry]:
        """The retained entries at most ``history`` s old whose events ``q`` does not hold."""
        now = self.clock.now()
        return [
            e
            for e in t.retained(now)
            if e.published_at >= now - history and e.event_id not in q.copies
        ]

    def _deliver_history(self, t: _Topic, q: _Queue, history: float) -> int:
        """Copy :meth:`_history_for` to the back of ``q``, oldest first; returns how many
        (the caller holds the lock)."""
        count = 0
        for e in self._history_for(t, q, history):
            c = _Copy(e.event_id, e.body, e.key)
            q.copies[e.event_id] = c
            q.enqueue(c)
            t.held[e.event_id] += 1
            count += 1
        return count

    def groups(self, topic: str) -> list[str]:
        """See :meth:`broker_core.transport.Transport.groups`."""
        validate_topic(topic)
        with self._lock:
            t = self._topics.get(topic)
            return sorted(t.groups) if t else []

    def topics(self) -> list[str]:
        """See :meth:`broker_core.transport.Transport.topics`."""
        with self._lock:
            return sorted(name for name, t in self._topics.items() if t.groups)

    # -- publish and claim --------------------------------------------------------------

    def publish(
        self,
        topic: str,
        events: Sequence[tuple[str, bytes]],
        *,
        keys: Sequence[str | None] | None = None,
        dedup_window: float = 0.0,
    ) -> int:
        """See :meth:`broker_core.transport.Transport.publish`."""
        validate_topic(topic)
        # Everything is checked before anything is stored: a refused call stores nothing.
        if dedup_window < 0:
            raise ValueError(f"dedup_window must not be negative, got {dedup_window}")
        if keys is not None:
            if len(keys) != len(events):
                raise ValueError(f"{len(keys)} keys for {len(events)} events")
            for key in keys:
                if key is not None:
                    validate_key(key)
        with self._lock:
            t = self._topics.get(topic)
            if t is None or not (t.groups or t.retains):
                return 0
            now = self.clock.now()
            # Forget at least as many ended windows and history entries as this call can
            # add: bounded work, and neither outgrows what the topic must keep.
            t.forget_windows(now, 2 * len(events) + 16)
            retains = t.retains
            if retains or t.log:
                t.trim(now, len(events) + _TRIM_BUDGET)
            queues = list(t.groups.items())
            n = len(queues)
            published = t.published
            added = 0
            for i, (event_id, body) in enumerate(events):
                if t.still_held(event_id, now) or published.get(event_id, -math.inf) > now:
                    continue
                key = None if keys is None else keys[i]
                if n:
                    t.held[event_id] = n
                if retains:
                    t.append(event_id, body, key, now)
                    t.trim(now, 1)  # the newest max_events: one in, one out
                added += 1
                t.published_count += 1
                if dedup_window > 0:
                    published[event_id] = ends = now + dedup_window
                    heappush(t.windows, (ends, event_id))
                for _, q in queues:
                    c = _Copy(event_id, body, key)
                    q.copies[event_id] = c
                    q.enqueue(c)
            if added:
                for group, _ in queues:
                    self._notify(group, topic, work=True)
            return added * n

    def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        """See :meth:`broker_core.transport.Transport.claim`."""
        validate_group(group)
        for topic in topics:
            validate_topic(topic)
        out: list[Message] = []
        with self._lock:
            now = self.clock.now()
            deadline = now + lease
            alone = False  # an isolated event was taken, or is next: the claim ends
            for topic in topics:
                if len(out) >= max_count or alone:
                    break
                t = self._topics.get(topic)
                q = t.groups.get(group) if t else None
                if t is None or q is None:
                    continue
                if t.log:
                    t.trim(now, _TRIM_BUDGET)  # a quiet topic's history ages out too
                self._reap(q, now)
                ready = q.ready
                taken = len(out)
                while ready and len(out) < max_count:
                    c = ready.popleft()
                    if c.attempts >= max_attempts:
                        self._kill(q, c, "max_attempts", None, now)
                        continue
                    if c.suspect:
                        alone = True
                        if out:
                            ready.appendleft(c)
                            break
                    key = next(self._keys)
                    c.state = _State.LEASED
                    c.attempts += 1
                    c.token = self._token_prefix + str(key)
                    c.deadline = deadline
                    c.heap_key = key
                    heappush(q.lease_heap, (deadline, key, c))
                    q.leased += 1
                    receipt = Receipt(topic, group, c.event_id, c.token)
                    out.append(Message(receipt, c.body, c.attempts, deadline, c.key, c.suspect))
                    if alone:
                        break
                if len(out) > taken:
                    self._notify(group, topic, work=False, at=deadline)
        return out

    # -- settling a delivery ----------------------------------------------------------------

    def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.ack`."""
        results: list[bool] = []
        with self._lock:
            now = self.clock.now()
            for r in receipts:
                found = self._live(r, now)
                if found is None:
                    results.append(False)
                    continue
                q, c = found
                self._unlease(q, c)
                self._done(r.topic, q, c)
                q.acked += 1
                if q.leave_lane(c):
                    self._notify(r.group, r.topic, work=True)
                results.append(True)
        return results

    def nack(self, receipt: Receipt, *, delay: float = 0.0, error: str | None = None) -> bool:
        """See :meth:`broker_core.transport.Transport.nack`."""
        with self._lock:
            now = self.clock.now()
            found = self._live(receipt, now)
            if found is None:
                return False
            q, c = found
            self._unlease(q, c)
            c.suspect = False  # its handler returned an error: it did not crash anyone
            if error is not None:
                c.error = safe_text(error)
            if delay > 0:
                c.state = _State.DELAYED
                c.heap_key = key = next(self._keys)
                heappush(q.delayed, (now + delay, key, c))
                self._notify(receipt.group, receipt.topic, work=False, at=now + delay)
            else:
                c.state = _State.READY
                q.ready.appendleft(c)
                self._notify(receipt.group, receipt.topic, work=True)
            return True

    def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.extend`."""
        results: list[bool] = []
        with self._lock:
            now = self.clock.now()
            deadline = now + lease
            for r in receipts:
                found = self._live(r, now)
                if found is None:
                    results.append(False)
                    continue
                q, c = found
                results.append(True)
                if deadline <= c.deadline:
                    continue  # a lease never gets shorter
                c.deadline = deadline
                c.heap_key = key = next(self._keys)
                heappush(q.lease_heap, (deadline, key, c))
                self._compact(q)
                self._notify(r.group, r.topic, work=False, at=deadline)
        return results

    def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.release`."""
        results: list[bool] = []
        woken: set[tuple[str, str]] = set()
        with self._lock:
            now = self.clock.now()
            # Backwards, so that events given back together keep their order at the front.
            for r in reversed(receipts):
                found = self._live(r, now)
                results.append(found is not None)
                if found is None:
                    continue
                q, c = found
                self._unlease(q, c)
                c.attempts -= 1
                c.state = _State.READY
                q.ready.appendleft(c)
                woken.add((r.group, r.topic))
            for group, topic in woken:
                self._notify(group, topic, work=True)
        results.reverse()
        return results

    def kill(self, receipt: Receipt, *, reason: str, error: str | None = None) -> bool:
        """See :meth:`broker_core.transport.Transport.kill`."""
        with self._lock:
            now = self.clock.now()
            found = self._live(receipt, now)
            if found is None:
                return False
            q, c = found
            self._unlease(q, c)
            if self._kill(q, c, reason, error, now):
                self._notify(receipt.group, receipt.topic, work=True)
            return True

    # -- dead letters ---------------------------------------------------------------------

    def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """See :meth:`broker_core.transport.Transport.dead_letters`."""
        validate_topic(topic)
        validate_group(group)
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        with self._lock:
            q = self._queue(topic, group)
            if q is None:
                return []
            return [
                DeadLetter(
                    topic, group, c.event_id, c.body, c.reason, c.error, c.attempts, c.died_at
                )
                for c in islice(q.dead.values(), offset, offset + max(limit, 0))
            ]

    def replay_dead(self, topic: str, group: str, event_ids: Sequence[str] | None = None) -> int:
        """See :meth:`broker_core.transport.Transport.replay_dead`."""
        with self._lock:
            q, chosen = self._take_dead(topic, group, event_ids)
            for c in chosen:
                c.state = _State.READY
                c.attempts = 0
                c.error = None
                c.reason = ""
                c.suspect = False
                q.enqueue(c)
            if chosen:
                self._notify(group, topic, work=True)
            return len(chosen)

    def purge_dead(self, topic: str, group: str, event_ids: Sequence[str] | None = None) -> int:
        """See :meth:`broker_core.transport.Transport.purge_dead`."""
        with self._lock:
            q, chosen = self._take_dead(topic, group, event_ids)
            for c in chosen:
                self._done(topic, q, c)
            return len(chosen)

    def _take_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None
    ) -> tuple[_Queue, list[_Copy]]:
        """Remove the chosen dead copies from DEAD (the caller holds the lock)."""
        validate_topic(topic)
        validate_group(group)
        q = self._queue(topic, group)
        if q is None:
            return _Queue(), []
        chosen = self._chosen_dead(q, event_ids)
        for c in chosen:
            del q.dead[c.event_id]
        return q, chosen

    # -- observing ------------------------------------------------------------------------

    def stats(self, topic: str, group: str) -> QueueStats:
        """See :meth:`broker_core.transport.Transport.stats`."""
        validate_topic(topic)
        validate_group(group)
        with self._lock:
            q = self._queue(topic, group)
            if q is None:
                return QueueStats(topic, group, 0, 0, 0, 0, 0)
            self._reap(q, self.clock.now())
            ready = len(q.ready) + q.waiting
            return QueueStats(topic, group, ready, q.leased, len(q.delayed), len(q.dead), q.acked)

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """See :meth:`broker_core.transport.Transport.wait`.

        Each call parks on a future of the running loop, so the store never holds an
        asyncio object beyond the call. Publishes, immediate nacks and replays wake it
        with True. A new lease or delay that ends before the waiter would wake by itself
        wakes it to recompute its sleep, which never passes the next expiry or due time.
        """
        validate_group(group)
        for topic in topics:
            validate_topic(topic)
        wanted = frozenset(topics)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            with self._lock:
                now = self.clock.now()
                next_due = math.inf
                for topic in wanted:
                    q = self._queue(topic, group)
                    if q is None:
                        continue
                    self._reap(q, now)
                    if q.ready:
                        return True
                    next_due = min(next_due, q.next_due())
                remaining = give_up - loop.time()
                if remaining <= 0:
                    return False
                until_due = next_due - now
                waiter = _Waiter(loop, loop.create_future(), wanted, next_due)
                self._waiters.setdefault(group, set()).add(waiter)
            try:
                work = await asyncio.wait_for(waiter.future, min(remaining, until_due))
            except TimeoutError:
                # Woken by a lease expiry or a due retry: there may be work now.
                return until_due <= remaining
            finally:
                with self._lock:
                    self._waiters.get(group, set()).discard(waiter)
            if work:
                return True

    # -- internals ------------------------------------------------------------------------

    def _queue(self, topic: str, group: str) -> _Queue | None:
        t = self._topics.get(topic)
        return t.groups.get(group) if t else None

    def _live(self, receipt: Receipt, now: float) -> tuple[_Queue, _Copy] | None:
        """The queue and copy a receipt leases, or None if the receipt is stale.

        Expired counts as stale even before anyone reclaims the event: past its deadline
        the lease belongs to nobody.
        """
        q = self._queue(receipt.topic, receipt.group)
        if q is None:
            return None
        c = q.copies.get(receipt.event_id)
        if (
            c is None
            or c.state is not _State.LEASED
            or c.token != receipt.token
            or now >= c.deadline
        ):
            return None
        return q, c

    def _unlease(self, q: _Queue, c: _Copy) -> None:
        q.leased -= 1
        c.heap_key = 0  # its lease heap entries are stale from now on
        self._compact(q)

    def _compact(self, q: _Queue) -> None:
        # Acked and extended leases leave stale heap entries until their deadline; with
        # long leases and fast acks that would grow without bound, so rebuild now and then.
        heap = q.lease_heap
        if len(heap) > _COMPACT_MIN and len(heap) > _COMPACT_FACTOR * q.leased:
            heap[:] = [item for item in heap if item[2].heap_key == item[1]]
            heapify(heap)

    def _reap(self, q: _Queue, now: float) -> None:
        """Expired leases and due delayed copies go back to the front of READY."""
        leases, delayed = q.lease_heap, q.delayed
        if not (leases and leases[0][0] <= now) and not (delayed and delayed[0][0] <= now):
            return
        back: list[_HeapItem] = []
        while leases and leases[0][0] <= now:
            item = heappop(leases)
            c = item[2]
            if c.heap_key == item[1]:
                c.state = _State.READY
                c.heap_key = 0
                c.suspect = True
                q.leased -= 1
                back.append(item)
        while delayed and delayed[0][0] <= now:
            item = heappop(delayed)
            item[2].state = _State.READY
            item[2].heap_key = 0
            back.append(item)
        back.sort()  # the first to expire or fall due comes out first
        q.ready.extendleft(item[2] for item in reversed(back))

    def _kill(self, q: _Queue, c: _Copy, reason: str, error: str | None, now: float) -> bool:
        """Move ``c`` to DEAD; returns whether the next copy of its key became claimable."""
        c.state = _State.DEAD
        c.reason = safe_text(reason)
        if error is not None:
            c.error = safe_text(error)
        c.died_at = now
        q.dead[c.event_id] = c
        return q.leave_lane(c)

    def _done(self, topic: str, q: _Queue, c: _Copy) -> None:
        del q.copies[c.event_id]
        self._topics[topic].release(c.event_id)

    def _topic(self, topic: str) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic()
        return t

    @staticmethod
    def _chosen_dead(q: _Queue, event_ids: Collection[str] | None) -> list[_Copy]:
        if event_ids is None:
            return list(q.dead.values())
        wanted = set(event_ids)
        return [c for c in q.dead.values() if c.event_id in wanted]

    def _notify(self, group: str, topic: str, *, work: bool, at: float = math.inf) -> None:
        """Wake ``group``'s waiters on ``topic``: for work, or to wake earlier than planned."""
        waiters = self._waiters.get(group)
        if not waiters:
            return
        woken = [w for w in waiters if topic in w.topics and (work or at < w.wake_at)]
        for w in woken:
            waiters.discard(w)
            w.wake(work)


class MemoryTransport:
    """The :class:`~broker_core.transport.Transport` of a :class:`MemoryStore`.

    ``MemoryTransport(clock=c)`` works on a fresh private store reading ``c``;
    ``MemoryTransport(store=s)`` on a shared one (see :func:`named_store`). State lives in
    the store, so ``close`` loses nothing and other transports of the store see it all.
    """

    def __init__(self, *, clock: Clock | None = None, store: MemoryStore | None = None) -> None:
        if store is None:
            store = MemoryStore(clock)
        elif clock is not None and clock is not store.clock:
            raise ValueError("clock differs from the clock of the given store")
        self.store = store

    @property
    def max_body_bytes(self) -> None:
        """None: a memory store keeps bodies of any size."""
        return None

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to release; the store keeps its state."""

    async def subscribe(
        self,
        topic: str,
        group: str,
        *,
        ordered: bool | None = None,
        history: float | None = None,
    ) -> None:
        """See :meth:`MemoryStore.subscribe`."""
        self.store.subscribe(topic, group, ordered=ordered, history=history)

    async def configure_topic(
        self,
        topic: str,
        *,
        max_age: float | None = None,
        max_events: int | None = None,
        partitions: int | None = None,
    ) -> None:
        """See :meth:`broker_core.transport.Transport.configure_topic`."""
        self.store.configure_topic(
            topic, max_age=max_age, max_events=max_events, partitions=partitions
        )

    async def topic_stats(self, topic: str) -> TopicStats:
        """See :meth:`broker_core.transport.Transport.topic_stats`."""
        return self.store.topic_stats(topic)

    async def rewind(self, topic: str, group: str, *, history: float, dry_run: bool = False) -> int:
        """See :meth:`broker_core.transport.Transport.rewind`."""
        return self.store.rewind(topic, group, history=history, dry_run=dry_run)

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """See :meth:`broker_core.transport.Transport.unsubscribe`."""
        return self.store.unsubscribe(topic, group)

    async def groups(self, topic: str) -> list[str]:
        """See :meth:`broker_core.transport.Transport.groups`."""
        return self.store.groups(topic)

    async def topics(self) -> list[str]:
        """See :meth:`broker_core.transport.Transport.topics`."""
        return self.store.topics()

    async def publish(
        self,
        topic: str,
        events: Sequence[tuple[str, bytes]],
        *,
        keys: Sequence[str | None] | None = None,
        dedup_window: float = 0.0,
        connection: object | None = None,
    ) -> int:
        """See :meth:`broker_core.transport.Transport.publish`; ``connection`` is refused."""
        if connection is not None:
            raise TypeError(
                "MemoryTransport cannot publish on a caller's connection (connection=...): only a "
                "transport over a database, such as PostgreSQL, writes in the caller's "
                "transaction"
            )
        return self.store.publish(topic, events, keys=keys, dedup_window=dedup_window)

    async def claim(
        self,
        group: str,
        topics: Sequence[str],
        *,
        max_count: int,
        lease: float,
        max_attempts: int,
    ) -> list[Message]:
        """See :meth:`broker_core.transport.Transport.claim`."""
        return self.store.claim(
            group, topics, max_count=max_count, lease=lease, max_attempts=max_attempts
        )

    async def wait(self, group: str, topics: Sequence[str], timeout: float) -> bool:
        """See :meth:`MemoryStore.wait`."""
        return await self.store.wait(group, topics, timeout)

    async def ack(self, receipts: Sequence[Receipt]) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.ack`."""
        return self.store.ack(receipts)

    async def nack(self, receipt: Receipt, *, delay: float = 0.0, error: str | None = None) -> bool:
        """See :meth:`broker_core.transport.Transport.nack`."""
        return self.store.nack(receipt, delay=delay, error=error)

    async def extend(self, receipts: Sequence[Receipt], lease: float) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.extend`."""
        return self.store.extend(receipts, lease)

    async def release(self, receipts: Sequence[Receipt]) -> list[bool]:
        """See :meth:`broker_core.transport.Transport.release`."""
        return self.store.release(receipts)

    async def kill(self, receipt: Receipt, *, reason: str, error: str | None = None) -> bool:
        """See :meth:`broker_core.transport.Transport.kill`."""
        return self.store.kill(receipt, reason=reason, error=error)

    async def dead_letters(
        self, topic: str, group: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """See :meth:`broker_core.transport.Transport.dead_letters`."""
        return self.store.dead_letters(topic, group, limit=limit, offset=offset)

    async def replay_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """See :meth:`broker_core.transport.Transport.replay_dead`."""
        return self.store.replay_dead(topic, group, event_ids)

    async def purge_dead(
        self, topic: str, group: str, event_ids: Sequence[str] | None = None
    ) -> int:
        """See :meth:`broker_core.transport.Transport.purge_dead`."""
        return self.store.purge_dead(topic, group, event_ids)

    async def stats(self, topic: str, group: str) -> QueueStats:
        """See :meth:`broker_core.transport.Transport.stats`."""
        return self.store.stats(topic, group)


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def named_store(name: str = "", clock: Clock | None = None) -> MemoryStore:
    """The process-wide store called ``name`` (``""``: the default store), made on first use.

    ``clock`` applies when the store is made; passing a different clock for an existing
    store raises ValueError rather than silently mixing two clocks' deadlines.
    """
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore(clock)
        elif clock is not None and clock is not store.clock:
            raise ValueError(
                f"memory store {name!r} already exists with another clock; "
                "use a fresh store name (or MemoryTransport(clock=...)) per test"
            )
        return store


def forget_store(name: str = "") -> None:
    """Drop the process-wide store called ``name``; the next use makes a fresh one.

    Transports already holding the store keep working on it.
    """
    with _stores_lock:
        _stores.pop(name, None)
