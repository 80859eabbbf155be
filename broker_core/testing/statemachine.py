"""A hypothesis state machine that holds a transport to the pure model, step by step.

Rules publish (batches, with event ids reused so idempotent publish and the lifetime of
bodies are exercised, with or without a dedup window), republish what was published
with a window, subscribe, claim, consume everything of a topic in every group (so that
ids are often done everywhere), settle (ack, nack with and without delay,
extend, release, kill), renew held leases (mostly asking for less than is left), replay
and purge dead letters, move the clock, crash consumers (forget their receipts), set topics'
retention and partition counts, subscribe new groups from history and rewind groups.
There are few rules, each with many choices, because hypothesis enables a random subset
of rules per example. Settling picks receipts from those a consumer
still holds *or* from every receipt ever handed out, so stale receipts are used on
purpose. After every step invariants 1-12 of docs/semantics.md are checked
against the model:

1. nothing lost: per (topic, group), the transport's READY/LEASED/DELAYED/DEAD counts and
   dead letters equal the model's, which places every published copy in one state;
2. one lease at a time: a claim only hands out events the model has READY;
3. fencing: settling with a stale receipt returns False and changes no count, and an
   extend never ends a lease sooner;
4. progress: a claim returning fewer than ``max_count`` leaves nothing READY, unless it
   stopped before an event that must go out alone; expiries and due delays are READY at
   the next look;
5. order: claims take the front of the queue, first deliveries in publish order behind
   redeliveries (see :mod:`broker_core.testing.model`);
6. bounded attempts: attempt numbers match the model and never pass ``max_attempts``;
7. isolation: every group is checked on its own after every step;
8. per-key order: an ordered group only leases the READY head of a key, and never holds
   two events of a key out (checked after every step);
9. history completeness: each topic retains exactly what its retention covers, and a
   group subscribing from history or rewinding gets those events in publish order
   (behind older events of their keys), which the counts and claims that follow check;
10. no duplicate publish: a publish enqueues exactly the copies the model does, which
    skips ids held or published within their dedup window;
11. no collateral charge: an event whose last lease expired is marked isolated and is
    the only message of its claim, and a release takes back the claim's attempt.
12. partitions: on a partitioned topic (``partitions`` of :meth:`TransportStateMachine.bind`,
    or a ``configure`` that changes the count while the topic holds nothing) order is
    checked per partition, every other invariant as above; a change of the count while
    the topic holds an event is refused and changes nothing.

Time moves in whole seconds from a whole-second start, and leases and delays end in
``.5``, so no deadline ever coincides with a clock reading.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker_core.clock import ManualClock
from broker_core.errors import PartitionChangeRefused, SubscriptionMismatch
from broker_core.testing.harness import TransportFactory
from broker_core.testing.model import DeliveryModel, State
from broker_core.transport import Message, Receipt, Transport

__all__ = ["DEFAULT_SETTINGS", "TransportStateMachine", "run_transport_state_machine"]

DEFAULT_SETTINGS = hypothesis.settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Sizes that keep a run to seconds on the memory transport; pass others to shrink or grow."""

TOPICS = ("orders", "payments")
GROUPS = ("billing", "shipping", "audit")
FIRST_SUBSCRIPTIONS = ((TOPICS[0], GROUPS[0]), (TOPICS[0], GROUPS[1]))
"""Subscribed from the start (the second ordered), and never unsubscribed."""
EVENT_IDS = tuple(f"e{i}" for i in range(8))
"""A small pool, so that ids are often republished while held, and after being done."""
LEASES = (1.5, 4.5, 10.5, 30.5)
ORDERING_KEYS = (None, "k1", "k2", "k/3")
"""Ordering keys events are published with: few, so that keys repeat."""
DEDUP_WINDOWS = (0.0, 0.0, 3.5, 60.5)
"""Half the publishes without a window (ids are new once done), half with a short or long one."""
EXTENSIONS = (0.5, 1.5, 1.5, 30.5)
"""Mostly shorter than the lease: an extend must never end a lease sooner."""
DELAYS = (0.0, 0.5, 2.5)
ERRORS = (None, "ValueError: a", "KeyError: b")
LATE = st.sampled_from([0, 0, 0, 0, 2, 5])
"""Seconds the clock moves just before a settling call."""
PICK = st.integers(0, 3)
"""Which receipt, counting from the newest: recent ones are the likeliest to be live."""
FROM_SEEN = st.sampled_from([False, False, False, True])
"""Whether a settling call uses any receipt ever seen (often stale) or a held one."""
PARTITIONS = (None, None, None, None, 1, 4)
"""Partition counts ``configure`` asks for: mostly none (keep the count), sometimes a
change, which is refused while the topic holds events. With 4 partitions the keys and
the unkeyed ids spread over all of them."""
KEY_OF_ID = {
    event_id: ORDERING_KEYS[n % len(ORDERING_KEYS)] for n, event_id in enumerate(EVENT_IDS)
}
"""On a partitioned topic each id is published with one key, as events of an aggregate
are: the same id with another key may reach another partition, a new event there."""
RETENTIONS = ((None, None), (5.5, None), (None, 3), (30.5, 6))
"""(max_age, max_events) a topic is configured with: none, short by age, few by count, both."""
HISTORIES = (math.inf, math.inf, 2.5, 10.5)
"""How far back a subscription from history or a rewind reaches: all, or a few seconds."""
TIME_TOLERANCE = 1e-3
"""Stores may keep times in milliseconds."""

_T = TypeVar("_T")


class TransportStateMachine(RuleBasedStateMachine):
    """Drives one transport and a :class:`DeliveryModel` side by side.

    Use :meth:`bind` to say which transport. Each instance runs every transport call on
    its own event loop, so run it from a synchronous test (no loop running in the thread).
    """

    partitions: int = 1
    """The partitions of the first topic, configured before any group subscribes."""

    @classmethod
    def bind(cls, factory: TransportFactory, partitions: int = 1) -> type[TransportStateMachine]:
        """A subclass that tests transports from ``factory``, with the first topic spread
        over ``partitions`` partitions from the start.

        Its ``TestCase`` attribute is a unittest test case, for runners other than pytest.
        """

        def make_transport(self: TransportStateMachine, clock: ManualClock) -> Transport:
            return factory(clock)

        attributes = {"make_transport": make_transport, "partitions": partitions}
        return type(f"{cls.__name__}Bound", (cls,), attributes)

    def make_transport(self, clock: ManualClock) -> Transport:
        """Build the transport under test (unconnected, empty store); see :meth:`bind`."""
        raise NotImplementedError("use TransportStateMachine.bind(factory)")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock(1_000_000.0)
        self.transport = self.make_transport(self.clock)
        self.model = DeliveryModel()
        self.held: list[Receipt] = []
        """Receipts a running consumer still holds."""
        self.seen: list[Receipt] = []
        """Every receipt ever handed out: most are stale sooner or later."""
        self.publishes = 0
        self.run(self.transport.connect())

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run one transport call to completion on this machine's loop."""
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        """Close the transport and the loop."""
        try:
            self.run(self.transport.close())
        finally:
            self.loop.close()

    # -- helpers ------------------------------------------------------------------------

    def _pick(self, index: int, from_seen: bool) -> Receipt:
        """A held receipt, or any receipt ever seen (often stale)."""
        if from_seen or not self.held:
            return self.seen[-1 - index % len(self.seen)]
        return self.held[-1 - index % len(self.held)]

    # -- rules ----------------------------------------------------------------------------

    @initialize()
    def first_subscriptions(self) -> None:
        """Start with two groups on one topic, one of them ordered: claims have a group,
        fan-out is the norm, and per-key order is always under test. A partitioned run
        spreads that topic over its partitions first."""
        if self.partitions > 1:
            self.configure(TOPICS[0], (None, None), self.partitions)
        for (topic, group), ordered in zip(FIRST_SUBSCRIPTIONS, (False, True), strict=True):
            self.subscribe(topic, group, ordered)

    @rule(
        topic=st.sampled_from(TOPICS),
        group=st.sampled_from(GROUPS),
        ordered=st.sampled_from([None, None, False, True]),
        history=st.sampled_from((None, None, *HISTORIES)),
    )
    def subscribe(
        self, topic: str, group: str, ordered: bool | None, history: float | None = None
    ) -> None:
        """A group subscribes (again): from now on, or a new one from history first.

        Subscribing again keeps the stored options; other explicit options are refused.
        A new group subscribing with ``history`` first gets the retained events of that
        age, in publish order (invariant 9): the claims and counts that follow hold it to
        the model.
        """
        now = self.clock.now()
        call = self.transport.subscribe(topic, group, ordered=ordered, history=history)
        if self.model.subscribe(topic, group, ordered, history, now):
            self.run(call)
            return
        try:
            self.run(call)
        except SubscriptionMismatch:
            return
        raise AssertionError(f"{topic}/{group}: subscribe changed its options to {ordered=}")

    @rule(
        topic=st.sampled_from(TOPICS),
        retention=st.sampled_from(RETENTIONS),
        partitions=st.sampled_from(PARTITIONS),
    )
    def configure(
        self,
        topic: str,
        retention: tuple[float | None, int | None],
        partitions: int | None = None,
    ) -> None:
        """A topic's retention is set, changed or removed (what it no longer covers goes),
        and perhaps its partition count, which changes only while it holds no event
        (invariant 12); a refused change changes nothing."""
        max_age, max_events = retention
        call = self.transport.configure_topic(
            topic, max_age=max_age, max_events=max_events, partitions=partitions
        )
        if self.model.configure(topic, max_age, max_events, self.clock.now(), partitions):
            self.run(call)
            return
        try:
            self.run(call)
        except PartitionChangeRefused:
            return
        raise AssertionError(f"{topic}: partitions changed to {partitions} while it holds events")

    @rule(pair=st.integers(0, 100), history=st.sampled_from(HISTORIES))
    def rewind(self, pair: int, history: float) -> None:
        """A group rebuilding a projection gets the retained events again (invariant 9):
        those it holds are left out, the others join the back of its queue in order."""
        pairs = self.model.pairs()
        topic, group = pairs[pair % len(pairs)]
        now = self.clock.now()
        preview = self.run(self.transport.rewind(topic, group, history=history, dry_run=True))
        expected = self.model.rewind(topic, group, history, now, dry_run=True)
        assert preview == expected, f"rewind dry run = {preview}, model says {expected}"
        got = self.run(self.transport.rewind(topic, group, history=history))
        expected = self.model.rewind(topic, group, history, now)
        assert got == expected, f"rewind({topic}, {group}, {history}) = {got}, model {expected}"

    @rule(
        topic=st.sampled_from(TOPICS),
        ids=st.lists(st.sampled_from(EVENT_IDS), min_size=1, max_size=4),
        window=st.sampled_from(DEDUP_WINDOWS),
        keys=st.none() | st.lists(st.sampled_from(ORDERING_KEYS), min_size=4, max_size=4),
    )
    def publish(
        self, topic: str, ids: list[str], window: float, keys: list[str | None] | None = None
    ) -> None:
        """Publish a batch; bodies are unique per publish to tell incarnations apart.

        With a dedup window, an id published within it is skipped even once every group
        is done with it (invariant 10); ids repeat often, since the pool is small.
        """
        self.publishes += 1
        events = [(i, f"{i}#{self.publishes}.{n}".encode()) for n, i in enumerate(ids)]
        keyed = None if keys is None else keys[: len(events)]
        if topic in self.model.partitions:
            keyed = [KEY_OF_ID[i] for i in ids]
        reached = self.run(self.transport.publish(topic, events, keys=keyed, dedup_window=window))
        expected = self.model.publish(topic, events, self.clock.now(), window, keyed)
        assert reached == expected, (
            f"publish enqueued {reached} copies, model says {expected} (invariant 10)"
        )

    @rule(topic=st.sampled_from(TOPICS))
    def consume_all(self, topic: str) -> None:
        """Every group of ``topic`` claims what it can and acks it: events get DONE.

        Healthy consumers, so that ids are often done in every group, and then only a
        dedup window stops their republication.
        """
        pairs = self.model.pairs()
        for index, (t, _) in enumerate(pairs):
            if t != topic:
                continue
            before = len(self.seen)
            self.claim(index, False, 8, LEASES[-1], 4)
            fresh = self.seen[before:]
            got = self.run(self.transport.ack(fresh))
            now = self.clock.now()
            expected = [self.model.ack(r, now) for r in fresh]
            assert got == expected, f"ack returned {got}, model says {expected} for {fresh}"
            for r in fresh:
                self.held.remove(r)

    @precondition(lambda self: any(self.model.windows.values()))
    @rule(topic=st.sampled_from(TOPICS), window=st.sampled_from(DEDUP_WINDOWS))
    def republish(self, topic: str, window: float) -> None:
        """An outbox relay re-sends what it published with a dedup window (invariant 10)."""
        ids = sorted(self.model.windows.get(topic, {}))
        if ids:
            self.publish(topic, ids[-4:], window)

    @rule(
        pair=st.integers(0, 100),
        all_topics=st.booleans(),
        max_count=st.integers(1, 3),
        lease=st.sampled_from(LEASES),
        max_attempts=st.integers(1, 4),
    )
    def claim(
        self, pair: int, all_topics: bool, max_count: int, lease: float, max_attempts: int
    ) -> None:
        """Claim, then hold the transport's answer against the model (invariants 2, 4-6).

        The group is a subscribed one; with ``all_topics`` it claims from every topic,
        subscribed or not.
        """
        pairs = self.model.pairs()
        topic, group = pairs[pair % len(pairs)]
        topics = TOPICS if all_topics else (topic,)
        now = self.clock.now()
        for topic in topics:
            self.model.reap(topic, group, now)
        dead_before = {t: self._dead_ids(t, group) for t in topics}
        msgs = self.run(
            self.transport.claim(
                group, topics, max_count=max_count, lease=lease, max_attempts=max_attempts
            )
        )
        assert len(msgs) <= max_count, f"claim returned {len(msgs)} > max_count={max_count}"
        problems: list[str] = []
        for topic in topics:
            mine = [m for m in msgs if m.topic == topic]
            problems += self._check_messages(mine, group, now + lease)
            died = [i for i in self._dead_ids(topic, group) if i not in dead_before[topic]]
            leased = [(m.event_id, m.receipt, m.lease_deadline) for m in mine]
            problems += self.model.take(
                topic, group, leased, died, now=now, max_attempts=max_attempts
            )
        strays = [m for m in msgs if m.topic not in topics]
        assert not strays, f"claim returned events of topics not asked for: {strays}"
        isolated = [m.event_id for m in msgs if m.isolated]
        if isolated and len(msgs) > 1:
            problems.append(f"isolated {isolated[0]} handed out with others (invariant 11)")
        assert not problems, "; ".join(problems)
        if len(msgs) < max_count:
            # A claim may stop early only at an event that must go out alone.
            models = [g for g in (self.model.group(t, group) for t in topics) if g]
            stopped_for_suspect = bool(msgs) and (
                bool(isolated) or any(g.suspect_in_front() for g in models)
            )
            for topic in topics:
                g = self.model.group(topic, group)
                left = g.claimable() if g else set()
                assert stopped_for_suspect or not left, (
                    f"{topic}/{group}: claim returned {len(msgs)} < max_count={max_count} "
                    f"while {sorted(left)} stay READY (progress, invariant 4)"
                )
        for m in msgs:
            self.held.append(m.receipt)
            self.seen.append(m.receipt)

    def _check_messages(self, msgs: list[Message], group: str, deadline: float) -> list[str]:
        problems = []
        for m in msgs:
            g = self.model.group(m.topic, group)
            c = g.copies.get(m.event_id) if g else None
            if c is None:
                problems.append(f"{m.topic}/{group}: claimed {m.event_id}, which it does not hold")
                continue
            if m.body != c.body:
                problems.append(f"{m.event_id}: body {m.body!r}, published {c.body!r}")
            if m.attempt != c.attempts + 1:
                problems.append(
                    f"{m.topic}/{group}: {m.event_id} attempt {m.attempt}, "
                    f"model says {c.attempts + 1} (invariant 6)"
                )
            if m.key != c.key:
                problems.append(f"{m.event_id}: key {m.key!r}, published with {c.key!r}")
            if m.isolated != c.suspect:
                problems.append(
                    f"{m.topic}/{group}: {m.event_id} isolated={m.isolated}, but its last "
                    f"lease {'expired' if c.suspect else 'did not expire'} (invariant 11)"
                )
            if m.group != group or abs(m.lease_deadline - deadline) > TIME_TOLERANCE:
                problems.append(f"{m.event_id}: bad receipt group or lease deadline: {m}")
        return problems

    def _dead_ids(self, topic: str, group: str) -> list[str]:
        return [d.event_id for d in self.run(self.transport.dead_letters(topic, group, limit=1000))]

    @precondition(lambda self: bool(self.seen))
    @rule(
        action=st.sampled_from(["ack", "ack", "nack", "extend", "kill", "release"]),
        picks=st.lists(PICK, min_size=1, max_size=3),
        from_seen=FROM_SEEN,
        late=LATE,
        delay=st.sampled_from(DELAYS),
        lease=st.sampled_from(EXTENSIONS),
        reason=st.sampled_from(["handler", "undecodable"]),
        error=st.sampled_from(ERRORS),
    )
    def settle(
        self,
        action: str,
        picks: list[int],
        from_seen: bool,
        late: int,
        delay: float,
        lease: float,
        reason: str,
        error: str | None,
    ) -> None:
        """A consumer acks, extends or releases a batch of receipts, or nacks or kills one.

        The clock first moves ``late`` seconds with no look at the store in between, so a
        lease may have expired without anyone having noticed: its receipt is stale all
        the same. Stale receipts must get False and change nothing (invariant 3).
        """
        self.clock.advance(late)
        if action in ("nack", "kill"):
            picks = picks[:1]
        receipts = list(dict.fromkeys(self._pick(i, from_seen) for i in picks))
        now = self.clock.now()
        if action == "ack":
            got = self.run(self.transport.ack(receipts))
            expected = [self.model.ack(r, now) for r in receipts]
        elif action == "extend":
            got = self.run(self.transport.extend(receipts, lease))
            expected = [self.model.extend(r, now, lease) for r in receipts]
        elif action == "release":
            got = self.run(self.transport.release(receipts))
            expected = [self.model.release(r, now) for r in receipts]
        elif action == "nack":
            got = [self.run(self.transport.nack(receipts[0], delay=delay, error=error))]
            expected = [self.model.nack(receipts[0], now, delay, error)]
        else:
            got = [self.run(self.transport.kill(receipts[0], reason=reason, error=error))]
            expected = [self.model.kill(receipts[0], now, reason, error)]
        assert got == expected, f"{action} returned {got}, model says {expected} for {receipts}"
        for r, live in zip(receipts, expected, strict=True):
            if r in self.held:
                self.held.remove(r)
            if action == "extend" and live:
                self.held.append(r)

    @precondition(lambda self: bool(self.held))
    @rule(pick=PICK, delay=st.sampled_from(DELAYS[1:]))
    def fail_and_claim_again(self, pick: int, delay: float) -> None:
        """A handler fails; its consumer schedules the retry and claims again at once.

        In an ordered group the retried event still holds its key: the next claim must
        not hand out a later event of that key (invariant 8).
        """
        self._retry_and_claim(self._pick(pick, False), delay)

    @precondition(lambda self: bool(self._blocking()))
    @rule(pick=PICK, delay=st.sampled_from(DELAYS[1:]))
    def retry_at_the_head_of_its_key(self, pick: int, delay: float) -> None:
        """As fail_and_claim_again, for an event whose key has later events waiting: the
        case where a retry must hold its key back (invariant 8; bullmq#2774)."""
        blocking = self._blocking()
        self._retry_and_claim(blocking[-1 - pick % len(blocking)], delay)

    def _blocking(self) -> list[Receipt]:
        """Held receipts of live leases whose key has later events waiting behind them."""
        now = self.clock.now()
        found = []
        for r in self.held:
            c = self.model.live(r, now)
            g = self.model.group(r.topic, r.group)
            if (
                c is not None
                and g is not None
                and c.key is not None
                and any(g.copies[i].key == c.key for i in g.waiting)
            ):
                found.append(r)
        return found

    def _retry_and_claim(self, receipt: Receipt, delay: float) -> None:
        now = self.clock.now()
        got = self.run(self.transport.nack(receipt, delay=delay, error="E: retry"))
        expected = self.model.nack(receipt, now, delay, "E: retry")
        assert got == expected, f"nack returned {got}, model says {expected} for {receipt}"
        self.held.remove(receipt)
        pairs = self.model.pairs()
        self.claim(pairs.index((receipt.topic, receipt.group)), False, 3, LEASES[1], 4)

    @precondition(lambda self: bool(self.held))
    @rule(picks=st.lists(PICK, min_size=1, max_size=3))
    def restart(self, picks: list[int]) -> None:
        """A consumer stops, giving back what it holds, and another claims it at once.

        Giving back is no failed attempt: the next delivery has the same attempt number
        (invariant 11).
        """
        receipts = list(dict.fromkeys(self._pick(i, False) for i in picks))
        now = self.clock.now()
        got = self.run(self.transport.release(receipts))
        expected = [self.model.release(r, now) for r in receipts]
        assert got == expected, f"release returned {got}, model says {expected} for {receipts}"
        for r in receipts:
            self.held.remove(r)
        pairs = self.model.pairs()
        self.claim(pairs.index((receipts[0].topic, receipts[0].group)), False, 3, LEASES[1], 4)

    @precondition(lambda self: any(r not in self.held for r in self.seen))
    @rule(pick=PICK, verb=st.sampled_from(["ack", "extend", "release"]), paused=LATE)
    def late(self, pick: int, verb: str, paused: int) -> None:
        """A consumer that lost its lease (it paused, or crashed and came back) settles.

        The clock first moves ``paused`` seconds with no look at the store, so a lease may
        have expired unnoticed. A stale receipt must get False and change nothing
        (invariant 3).
        """
        self.clock.advance(paused)
        old = [r for r in self.seen if r not in self.held]
        receipt = old[-1 - pick % len(old)]
        now = self.clock.now()
        if verb == "ack":
            [got], expected = self.run(self.transport.ack([receipt])), self.model.ack(receipt, now)
        elif verb == "extend":
            [got] = self.run(self.transport.extend([receipt], LEASES[-1]))
            expected = self.model.extend(receipt, now, LEASES[-1])
        else:
            [got] = self.run(self.transport.release([receipt]))
            expected = self.model.release(receipt, now)
        assert got == expected, f"late {verb} returned {got}, model says {expected} (invariant 3)"

    @precondition(lambda self: bool(self.held))
    @rule(picks=st.lists(PICK, min_size=1, max_size=3), lease=st.sampled_from(EXTENSIONS))
    def renew(self, picks: list[int], lease: float) -> None:
        """A running consumer renews leases it holds, often asking for less than is left.

        Renewals never end a lease sooner (fencing): the model keeps the later deadline.
        """
        receipts = list(dict.fromkeys(self._pick(i, False) for i in picks))
        now = self.clock.now()
        got = self.run(self.transport.extend(receipts, lease))
        expected = [self.model.extend(r, now, lease) for r in receipts]
        assert got == expected, f"extend returned {got}, model says {expected} for {receipts}"
        for r, live in zip(receipts, expected, strict=True):
            if not live:
                self.held.remove(r)

    @rule(seconds=st.integers(0, 3))
    def advance(self, seconds: int) -> None:
        """Move time; leases expire and delays fall due."""
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.held))
    @rule(keep=st.integers(0, 3))
    def crash(self, keep: int) -> None:
        """A consumer dies: its receipts are forgotten and only expiry brings the events back."""
        del self.held[keep:]

    @precondition(lambda self: any(p not in FIRST_SUBSCRIPTIONS for p in self.model.pairs()))
    @rule(pair=st.integers(0, 100))
    def unsubscribe(self, pair: int) -> None:
        """An operator removes a group from a topic; its copies go, its receipts go stale.

        The first subscriptions stay, so that fan-out and per-key order stay under test.
        """
        others = [p for p in self.model.pairs() if p not in FIRST_SUBSCRIPTIONS]
        topic, group = others[pair % len(others)]
        got = self.run(self.transport.unsubscribe(topic, group))
        expected = self.model.unsubscribe(topic, group)
        assert got == expected, f"unsubscribe({topic}, {group}) = {got}, model says {expected}"
        self.held = [r for r in self.held if (r.topic, r.group) != (topic, group)]

    @precondition(lambda self: self.model.any_dead())
    @rule(
        replay=st.booleans(),
        pair=st.integers(0, 100),
        ids=st.none() | st.lists(st.sampled_from(EVENT_IDS), max_size=3),
    )
    def dead_letter_admin(self, replay: bool, pair: int, ids: list[str] | None) -> None:
        """An operator replays dead letters (to READY, attempts reset) or purges them."""
        with_dead = [(t, g) for t, g in self.model.pairs() if self.model.dead_ids(t, g)]
        topic, group = with_dead[pair % len(with_dead)]
        if replay:
            got = self.run(self.transport.replay_dead(topic, group, ids))
            expected = self.model.replay(topic, group, ids)
        else:
            got = self.run(self.transport.purge_dead(topic, group, ids))
            expected = self.model.purge(topic, group, ids)
        verb = "replay_dead" if replay else "purge_dead"
        assert got == expected, f"{verb}({topic}, {group}, {ids}) = {got}, model says {expected}"

    @precondition(
        lambda self: any(g.claimable() for gs in self.model.topics.values() for g in gs.values())
    )
    @rule(group=st.sampled_from(GROUPS), topics=st.sampled_from([TOPICS[:1], TOPICS]))
    def wait_with_work(self, group: str, topics: Sequence[str]) -> None:
        """A waiter with READY work (by the model) must not sleep."""
        now = self.clock.now()
        ready = False
        for topic in topics:
            self.model.reap(topic, group, now)
            g = self.model.group(topic, group)
            ready = ready or bool(g and g.claimable())
        if ready:
            woke = self.run(asyncio.wait_for(self.transport.wait(group, topics, 0.5), 2.0))
            assert woke, f"wait() slept while {group} had READY work in {topics}"

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def one_event_per_key_at_a_time(self) -> None:
        """Invariant 8: an ordered group never leases or delays two events of one key, and
        the one it holds is its key's earliest not done."""
        for topic, group in self.model.pairs():
            g = self.model.group(topic, group)
            if g is None or not g.ordered:
                continue
            heads = g.heads()
            for c in g.copies.values():
                if c.key is not None and c.state in (State.LEASED, State.DELAYED):
                    assert heads[c.key] == c.event_id, (
                        f"{topic}/{group}: {c.event_id} of key {c.key!r} is {c.state.value} "
                        f"while {heads[c.key]}, published earlier, is not done (invariant 8)"
                    )

    @invariant()
    def history_as_retained(self) -> None:
        """Invariant 9: each topic retains exactly what its retention covers."""
        now = self.clock.now()
        for topic in TOPICS:
            stats = self.run(self.transport.topic_stats(topic))
            retained, oldest = self.model.topic_stats(topic, now)
            want = self.model.retention.get(topic, (None, None))
            assert (stats.max_age, stats.max_events) == want, f"{topic}: retention {stats}"
            partitions = self.model.partitions.get(topic, 1)
            assert stats.partitions == partitions, f"{topic}: {partitions} partitions, {stats}"
            assert stats.retained == retained, (
                f"{topic}: retains {stats.retained} events, model says {retained} (invariant 9)"
            )
            assert (stats.oldest_age is None) == (oldest is None), f"{topic}: {stats}"
            if stats.oldest_age is not None and oldest is not None:
                assert abs(stats.oldest_age - oldest) <= TIME_TOLERANCE, f"{topic}: {stats}"

    @invariant()
    def every_copy_in_one_state(self) -> None:
        """Invariants 1, 3 and 7: each group's counts and dead letters match the model."""
        now = self.clock.now()
        assert self.run(self.transport.topics()) == sorted(self.model.topics)
        for topic, groups in self.model.topics.items():
            assert self.run(self.transport.groups(topic)) == sorted(groups)
        for topic, group in self.model.pairs():
            self.model.reap(topic, group, now)
            g = self.model.group(topic, group)
            assert g is not None
            stats = self.run(self.transport.stats(topic, group))
            got = (stats.ready, stats.leased, stats.delayed, stats.dead)
            assert got == g.counts(), (
                f"{topic}/{group}: (ready, leased, delayed, dead) = {got}, model says {g.counts()}"
            )
            dead = self.run(self.transport.dead_letters(topic, group, limit=1000))
            assert [d.event_id for d in dead] == g.dead, (
                f"{topic}/{group}: dead letters {[d.event_id for d in dead]}, model {g.dead}"
            )
            for d in dead:
                c = g.copies[d.event_id]
                want = (c.body, c.reason, c.error, c.attempts)
                assert (d.body, d.reason, d.error, d.attempts) == want, (
                    f"{topic}/{group}: dead letter {d} differs from the model's {want}"
                )
                assert abs(d.died_at - c.died_at) <= TIME_TOLERANCE, f"died_at of {d}"


def run_transport_state_machine(
    factory: TransportFactory,
    *,
    settings: hypothesis.settings | None = None,
    partitions: int = 1,
) -> None:
    """Run :class:`TransportStateMachine` on transports from ``factory``; raise on a violation.

    Call it from a synchronous test. ``settings`` replaces :data:`DEFAULT_SETTINGS`
    (e.g. ``hypothesis.settings(DEFAULT_SETTINGS, max_examples=20)`` for a slow store).
    With ``partitions`` the first topic is spread over that many partitions from the
    start (invariant 12).
    """
    run_state_machine_as_test(
        TransportStateMachine.bind(factory, partitions), settings=settings or DEFAULT_SETTINGS
    )
