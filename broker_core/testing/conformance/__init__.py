"""``TransportConformance``: the pytest tests every transport must pass.

Subclass it in a test module and provide a ``transport_factory`` fixture returning a
:data:`~broker_core.testing.harness.TransportFactory`::

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport_factory(self) -> TransportFactory:
            return lambda clock: MyTransport(clock=clock, store=fresh_empty_store())

Every async test is marked ``asyncio`` itself, so the suite runs under pytest-asyncio in
strict mode too. Time only moves through the :class:`~broker_core.clock.ManualClock`
the factory receives; lease and delay values are chosen so that no deadline ever falls
exactly on the clock's reading. Only ``wait()`` tests use real time, bounded to fractions
of a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import hypothesis
import pytest
import pytest_asyncio

from broker_core.errors import InvalidName
from broker_core.names import MAX_NAME_LENGTH
from broker_core.testing.harness import Harness, TransportFactory, body_of, open_harness
from broker_core.testing.statemachine import run_transport_state_machine
from broker_core.transport import QueueStats, Receipt, Transport

__all__ = ["BAD_NAMES", "TransportConformance"]

T = "orders"
T2 = "payments"
G = "billing"
G2 = "shipping"

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
    "claim": lambda t, bad: t.claim(bad, [T], max_count=1, lease=1.0, max_attempts=3),
    "wait": lambda t, bad: t.wait(bad, [T], 0.0),
    "dead_letters": lambda t, bad: t.dead_letters(T, bad),
    "replay_dead": lambda t, bad: t.replay_dead(T, bad),
    "purge_dead": lambda t, bad: t.purge_dead(T, bad),
    "stats": lambda t, bad: t.stats(T, bad),
}


def _counts(stats: QueueStats) -> tuple[int, int, int, int]:
    return (stats.ready, stats.leased, stats.delayed, stats.dead)


class TransportConformance:
    """Async pytest tests of every transition of the delivery state machine.

    A subclass supplies the ``transport_factory`` fixture; set ``state_machine_settings``
    to resize the hypothesis run of ``test_state_machine`` (None keeps the defaults of
    :data:`~broker_core.testing.statemachine.DEFAULT_SETTINGS`).
    """

    state_machine_settings: ClassVar[hypothesis.settings | None] = None

    @pytest.fixture
    def transport_factory(self) -> TransportFactory:
        """Override in the subclass: build an unconnected transport over an empty store."""
        pytest.fail("a TransportConformance subclass must provide a transport_factory fixture")

    @pytest_asyncio.fixture
    async def harness(self, transport_factory: TransportFactory) -> AsyncIterator[Harness]:
        """A connected transport over an empty store and its ManualClock; closed after."""
        async with open_harness(transport_factory) as h:
            yield h

    # -- the state machine --------------------------------------------------------------

    def test_state_machine(self, transport_factory: TransportFactory) -> None:
        """The hypothesis state machine against the pure model: the seven invariants."""
        run_transport_state_machine(transport_factory, settings=self.state_machine_settings)

    # -- lifecycle and subscriptions ----------------------------------------------------

    @pytest.mark.asyncio
    async def test_connect_is_idempotent(self, harness: Harness) -> None:
        await harness.transport.connect()
        await harness.transport.subscribe(T, G)
        assert await harness.transport.groups(T) == [G]

    @pytest.mark.asyncio
    async def test_empty_store(self, harness: Harness) -> None:
        assert await harness.transport.topics() == []
        assert await harness.transport.groups(T) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        assert await harness.transport.dead_letters(T, G) == []
        assert await harness.claim(G, T) == []

    @pytest.mark.asyncio
    async def test_subscribe_lists_groups_and_topics(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G2)
        await tr.subscribe(T, G)
        await tr.subscribe(T, G)  # idempotent
        await tr.subscribe(T2, G)
        assert await tr.groups(T) == [G, G2]
        assert await tr.groups(T2) == [G]
        assert await tr.topics() == sorted([T, T2])

    @pytest.mark.asyncio
    async def test_stats_names_its_topic_and_group(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        stats = await harness.transport.stats(T, G)
        assert (stats.topic, stats.group) == (T, G)
        assert _counts(stats) == (0, 0, 0, 0)

    # -- publish ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_publish_to_no_subscriber_returns_zero(self, harness: Harness) -> None:
        assert await harness.publish(T, "e1", "e2") == 0
        await harness.transport.subscribe(T, G)
        assert await harness.claim(G, T) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_publish_returns_number_of_groups(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        await harness.transport.subscribe(T2, G)
        assert await harness.publish(T, "e1") == 2
        assert await harness.publish(T2, "e2") == 1
        assert await harness.transport.publish(T, []) == 2

    @pytest.mark.asyncio
    async def test_events_before_subscription_do_not_reach_group(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        await harness.transport.subscribe(T, G2)
        await harness.publish(T, "e2")
        assert await harness.claim_ids(G, T) == ["e1", "e2"]
        assert await harness.claim_ids(G2, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_fifo_first_deliveries(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        ids = [f"e{i:02d}" for i in range(20)]
        await harness.publish(T, *ids[:7])
        await harness.publish(T, *ids[7:])
        got: list[str] = []
        for _ in range(7):  # 20 events in batches of 3
            got += await harness.claim_ids(G, T, max_count=3)
        assert got == ids

    @pytest.mark.asyncio
    async def test_message_fields(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        now = harness.clock.now()
        [msg] = await harness.claim(G, T, lease=7.5)
        assert (msg.topic, msg.group, msg.event_id) == (T, G, "e1")
        assert msg.receipt.topic == T and msg.receipt.group == G and msg.receipt.event_id == "e1"
        assert msg.body == body_of("e1")
        assert msg.attempt == 1
        assert msg.lease_deadline == pytest.approx(now + 7.5)

    @pytest.mark.asyncio
    async def test_publish_is_atomic_and_ordered_per_call(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("b", b"1"), ("a", b"2"), ("c", b"3")])
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("b", b"1"), ("a", b"2"), ("c", b"3")]

    # -- idempotent publish and the lifetime of bodies ------------------------------------

    @pytest.mark.asyncio
    async def test_publish_skips_an_id_the_topic_holds(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"first")])
        assert await harness.transport.publish(T, [("e1", b"second"), ("e2", b"x")]) == 1
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("e1", b"first"), ("e2", b"x")]
        # still held while leased
        await harness.transport.publish(T, [("e1", b"third")])
        assert await harness.claim(G, T, max_count=10) == []

    @pytest.mark.asyncio
    async def test_duplicate_ids_within_one_publish(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"a"), ("e1", b"b")])
        msgs = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.body) for m in msgs] == [("e1", b"a")]

    @pytest.mark.asyncio
    async def test_id_is_held_until_every_group_is_done(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        await harness.transport.publish(T, [("e1", b"old")])
        [m1] = await harness.claim(G, T)
        assert await harness.transport.ack([m1.receipt]) == [True]
        await harness.transport.publish(T, [("e1", b"new")])  # G2 still holds it: skipped
        assert await harness.claim(G, T) == []
        [m2] = await harness.claim(G2, T)
        assert m2.body == b"old"
        assert await harness.transport.ack([m2.receipt]) == [True]
        # every group is done: the body is gone and the id is new again
        await harness.transport.publish(T, [("e1", b"new")])
        for group in (G, G2):
            [m] = await harness.claim(group, T)
            assert (m.event_id, m.body, m.attempt) == ("e1", b"new", 1)

    @pytest.mark.asyncio
    async def test_dead_event_is_held_until_purged(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.publish(T, [("e1", b"old")])
        [m] = await harness.claim(G, T)
        assert await harness.transport.kill(m.receipt, reason="handler")
        await harness.transport.publish(T, [("e1", b"new")])
        assert await harness.claim(G, T) == []
        assert await harness.transport.purge_dead(T, G) == 1
        await harness.transport.publish(T, [("e1", b"new")])
        [again] = await harness.claim(G, T)
        assert (again.body, again.attempt) == (b"new", 1)

    # -- claim --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_claim_respects_max_count(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        assert len(await harness.claim(G, T, max_count=2)) == 2
        assert len(await harness.claim(G, T, max_count=2)) == 1
        assert await harness.claim(G, T, max_count=2) == []
        assert _counts(await harness.transport.stats(T, G)) == (0, 3, 0, 0)

    @pytest.mark.asyncio
    async def test_claim_from_several_topics(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T2, G)
        await harness.publish(T, "a1", "a2")
        await harness.publish(T2, "b1", "b2")
        msgs = await harness.claim(G, [T, T2], max_count=10)
        assert sorted((m.topic, m.event_id) for m in msgs) == [
            (T, "a1"),
            (T, "a2"),
            (T2, "b1"),
            (T2, "b2"),
        ]
        assert [m.event_id for m in msgs if m.topic == T] == ["a1", "a2"]
        assert [m.event_id for m in msgs if m.topic == T2] == ["b1", "b2"]

    @pytest.mark.asyncio
    async def test_claim_of_unsubscribed_topic_is_empty(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        assert await harness.claim(G2, T) == []
        assert await harness.claim(G, T2) == []

    @pytest.mark.asyncio
    async def test_competing_consumers_get_different_events(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T)
        [b] = await harness.claim(G, T)
        assert (a.event_id, b.event_id) == ("e1", "e2")
        assert a.receipt.token != b.receipt.token

    @pytest.mark.asyncio
    async def test_concurrent_claims_never_share_an_event(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        ids = [f"e{i:03d}" for i in range(120)]
        await harness.publish(T, *ids)

        async def consumer() -> list[str]:
            got: list[str] = []
            for _ in range(40):  # bounded: 10 consumers x 40 rounds >> 120 events
                batch = await harness.claim_ids(G, T, max_count=3)
                if not batch:
                    break
                got += batch
                await asyncio.sleep(0)
            return got

        results = await asyncio.gather(*(consumer() for _ in range(10)))
        claimed = [i for r in results for i in r]
        assert sorted(claimed) == ids  # each exactly once
        for r in results:  # and each consumer saw them in queue order
            assert r == sorted(r)

    # -- ack ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_ack_marks_done(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        msgs = await harness.claim(G, T, max_count=3)
        assert await harness.transport.ack([m.receipt for m in msgs[:2]]) == [True, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 1, 0, 0)
        assert await harness.transport.ack([msgs[0].receipt, msgs[2].receipt]) == [False, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        harness.clock.advance(100)
        assert await harness.claim(G, T) == []
        assert await harness.transport.ack([]) == []

    # -- fan-out and isolation ------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_fan_out_gives_each_group_its_own_copy(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        assert await harness.publish(T, "e1", "e2") == 2
        ms = await harness.claim(G, T, max_count=10)
        assert [m.event_id for m in ms] == ["e1", "e2"]
        assert await harness.transport.ack([m.receipt for m in ms]) == [True, True]
        assert _counts(await harness.transport.stats(T, G)) == (0, 0, 0, 0)
        assert _counts(await harness.transport.stats(T, G2)) == (2, 0, 0, 0)
        m2 = await harness.claim(G2, T, max_count=10)
        assert [(m.event_id, m.attempt, m.body) for m in m2] == [
            ("e1", 1, body_of("e1")),
            ("e2", 1, body_of("e2")),
        ]

    @pytest.mark.asyncio
    async def test_isolation_of_failures(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, _ = await harness.claim(G, T, max_count=3, lease=2.5)
        assert await tr.kill(a.receipt, reason="handler", error="E")
        assert await tr.nack(b.receipt, delay=5.5)
        harness.clock.advance(3)  # c's lease expires in G
        assert _counts(await tr.stats(T, G)) == (1, 0, 1, 1)
        assert _counts(await tr.stats(T, G2)) == (3, 0, 0, 0)
        assert await tr.dead_letters(T, G2) == []
        assert await tr.replay_dead(T, G2) == 0
        assert await tr.purge_dead(T, G2) == 0
        ms = await harness.claim(G2, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 1), ("e2", 1), ("e3", 1)]
        assert len(await tr.dead_letters(T, G)) == 1

    @pytest.mark.asyncio
    async def test_receipt_of_one_group_does_not_act_on_another(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await tr.subscribe(T, G2)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        [m2] = await harness.claim(G2, T)
        forged = Receipt(T, G2, "e1", m.receipt.token)
        if forged != m2.receipt:
            assert await tr.ack([forged]) == [False]
            assert _counts(await tr.stats(T, G2)) == (0, 1, 0, 0)
        assert await tr.ack([m.receipt]) == [True]
        assert _counts(await tr.stats(T, G2)) == (0, 1, 0, 0)

    # -- lease expiry ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_lease_holds_until_its_deadline(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await harness.claim(G, T, lease=5.5)
        harness.clock.advance(5)
        assert _counts(await harness.transport.stats(T, G)) == (1, 1, 0, 0)
        assert await harness.claim_ids(G, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_expired_lease_returns_to_front_with_attempt_counted(
        self, harness: Harness
    ) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        assert _counts(await harness.transport.stats(T, G)) == (3, 0, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 2), ("e2", 1), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_expiry_is_noticed_by_claim_without_stats(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)

    @pytest.mark.asyncio
    async def test_several_expiries_all_go_before_first_deliveries(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3", "e4")
        await harness.claim(G, T, max_count=2, lease=1.5)
        harness.clock.advance(2)
        ms = await harness.claim(G, T, max_count=10)
        assert sorted(m.event_id for m in ms[:2]) == ["e1", "e2"]
        assert [m.attempt for m in ms[:2]] == [2, 2]
        assert [(m.event_id, m.attempt) for m in ms[2:]] == [("e3", 1), ("e4", 1)]

    # -- nack ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_nack_returns_to_front(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        _a, b = await harness.claim(G, T, max_count=2)
        assert await harness.transport.nack(b.receipt)
        assert _counts(await harness.transport.stats(T, G)) == (2, 1, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e2", 2), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_nack_with_delay_waits_until_due(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        [a] = await harness.claim(G, T)
        assert await tr.nack(a.receipt, delay=5.5, error="ValueError: later")
        assert _counts(await tr.stats(T, G)) == (2, 0, 1, 0)
        assert await harness.claim_ids(G, T, max_count=1) == ["e2"]
        harness.clock.advance(5)
        assert _counts(await tr.stats(T, G)) == (1, 1, 1, 0)
        harness.clock.advance(1)
        assert _counts(await tr.stats(T, G)) == (2, 1, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 2), ("e3", 1)]

    @pytest.mark.asyncio
    async def test_due_event_is_noticed_by_claim_without_stats(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        assert await harness.transport.nack(a.receipt, delay=1.5)
        assert await harness.claim(G, T) == []
        harness.clock.advance(2)
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)

    # -- extend -------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_extend_keeps_the_lease(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(2)
        assert await tr.extend([a.receipt], 5.5) == [True]
        harness.clock.advance(4)  # past the first deadline, before the new one
        assert _counts(await tr.stats(T, G)) == (1, 1, 0, 0)
        assert await harness.claim_ids(G, T) == ["e2"]
        assert await tr.ack([a.receipt]) == [True]

    @pytest.mark.asyncio
    async def test_extended_lease_still_expires(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=2.5)
        assert await tr.extend([a.receipt], 3.5) == [True]
        harness.clock.advance(4)
        assert await tr.ack([a.receipt]) == [False]
        [m] = await harness.claim(G, T)
        assert (m.event_id, m.attempt) == ("e1", 2)

    @pytest.mark.asyncio
    async def test_extend_can_shorten(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=20.5)
        assert await tr.extend([a.receipt], 1.5) == [True]
        harness.clock.advance(2)
        assert _counts(await tr.stats(T, G)) == (1, 0, 0, 0)

    # -- fencing ------------------------------------------------------------------------

    async def _assert_all_refused(self, harness: Harness, receipt: Receipt) -> None:
        tr = harness.transport
        assert await tr.ack([receipt]) == [False]
        assert await tr.nack(receipt) is False
        assert await tr.nack(receipt, delay=3.5) is False
        assert await tr.extend([receipt], 50.5) == [False]
        assert await tr.kill(receipt, reason="handler", error="E") is False

    @pytest.mark.asyncio
    async def test_expired_receipt_is_stale_before_anyone_reclaims(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        # Nobody has claimed or looked since it expired: the receipt is stale all the same.
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (2, 0, 0, 0)
        assert await tr.dead_letters(T, G) == []
        ms = await harness.claim(G, T, max_count=10)
        assert [(m.event_id, m.attempt) for m in ms] == [("e1", 2), ("e2", 1)]

    @pytest.mark.asyncio
    async def test_receipt_is_stale_after_another_consumer_reclaims(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T, lease=2.5)
        harness.clock.advance(3)
        [b] = await harness.claim(G, T, lease=10.5)
        assert (b.event_id, b.attempt) == ("e1", 2)
        assert b.receipt != a.receipt
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        harness.clock.advance(10)  # b's lease (10.5) was not extended by a's extend
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.ack([b.receipt]) == [True]
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    @pytest.mark.asyncio
    async def test_receipt_of_an_earlier_delivery_is_stale(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        assert await tr.nack(a.receipt)
        [b] = await harness.claim(G, T)
        await self._assert_all_refused(harness, a.receipt)
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.extend([b.receipt], 5.5) == [True]

    @pytest.mark.asyncio
    async def test_receipts_of_finished_deliveries_are_stale(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, c = await harness.claim(G, T, max_count=3)
        assert await tr.ack([a.receipt]) == [True]
        assert await tr.nack(b.receipt, delay=30.5)
        assert await tr.kill(c.receipt, reason="handler")
        before = _counts(await tr.stats(T, G))
        for r in (a.receipt, b.receipt, c.receipt):
            await self._assert_all_refused(harness, r)
        assert _counts(await tr.stats(T, G)) == before == (0, 0, 1, 1)

    @pytest.mark.asyncio
    async def test_forged_receipts_are_refused(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [a] = await harness.claim(G, T)
        await self._assert_all_refused(harness, Receipt(T, G, "e1", a.receipt.token + "x"))
        await self._assert_all_refused(harness, Receipt(T, G, "nope", a.receipt.token))
        await self._assert_all_refused(harness, Receipt(T2, G, "e1", a.receipt.token))
        assert _counts(await tr.stats(T, G)) == (0, 1, 0, 0)
        assert await tr.ack([a.receipt]) == [True]

    @pytest.mark.asyncio
    async def test_ack_and_extend_answer_per_receipt(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [old] = await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        again, other = await harness.claim(G, T, max_count=2, lease=5.5)
        assert (again.event_id, other.event_id) == ("e1", "e2")
        receipts = [old.receipt, again.receipt, other.receipt]
        assert await tr.extend(receipts, 9.5) == [False, True, True]
        assert await tr.ack([other.receipt, old.receipt, again.receipt]) == [True, False, True]

    # -- attempts and dead letters ----------------------------------------------------------

    @pytest.mark.asyncio
    async def test_max_attempts_reached_through_expiries(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        attempts = []
        for _ in range(3):
            [m] = await harness.claim(G, T, lease=1.5, max_attempts=3)
            attempts.append(m.attempt)
            harness.clock.advance(2)
        assert attempts == [1, 2, 3]
        assert await harness.claim(G, T, max_attempts=3) == []
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 1)
        [dl] = await tr.dead_letters(T, G)
        assert (dl.topic, dl.group, dl.event_id, dl.body) == (T, G, "e1", body_of("e1"))
        assert (dl.reason, dl.attempts) == ("max_attempts", 3)
        assert dl.died_at == pytest.approx(harness.clock.now())

    @pytest.mark.asyncio
    async def test_max_attempts_keeps_the_last_error(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        for i in range(2):
            [m] = await harness.claim(G, T, max_attempts=2)
            assert await tr.nack(m.receipt, error=f"ValueError: {i}")
        assert await harness.claim(G, T, max_attempts=2) == []
        [dl] = await tr.dead_letters(T, G)
        assert (dl.reason, dl.error, dl.attempts) == ("max_attempts", "ValueError: 1", 2)

    @pytest.mark.asyncio
    async def test_exhausted_event_is_skipped_and_claim_goes_on(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [m] = await harness.claim(G, T, max_attempts=1)
        assert await tr.nack(m.receipt)
        ms = await harness.claim(G, T, max_count=1, max_attempts=1)
        assert [(x.event_id, x.attempt) for x in ms] == [("e2", 1)]
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["e1"]

    @pytest.mark.asyncio
    async def test_attempts_count_every_delivery(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)  # expiry: 1
        [m] = await harness.claim(G, T)
        assert await tr.nack(m.receipt)  # nack: 2
        [m] = await harness.claim(G, T)
        assert await tr.nack(m.receipt, delay=0.5)  # delayed nack: 3
        harness.clock.advance(1)
        [m] = await harness.claim(G, T)
        assert m.attempt == 4

    @pytest.mark.asyncio
    async def test_kill_moves_to_dead_with_reason_and_error(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2")
        [m] = await harness.claim(G, T, lease=1.5)
        harness.clock.advance(2)
        [m] = await harness.claim(G, T)
        harness.clock.advance(1)
        assert await tr.kill(m.receipt, reason="undecodable", error="ValidationError: total")
        assert _counts(await tr.stats(T, G)) == (1, 0, 0, 1)
        [dl] = await tr.dead_letters(T, G)
        assert (dl.event_id, dl.body) == ("e1", body_of("e1"))
        assert (dl.reason, dl.error, dl.attempts) == ("undecodable", "ValidationError: total", 2)
        assert dl.died_at == pytest.approx(harness.clock.now())
        assert await harness.claim_ids(G, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_kill_without_error(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        [m] = await harness.claim(G, T)
        assert await harness.transport.kill(m.receipt, reason="poison")
        [dl] = await harness.transport.dead_letters(T, G)
        assert (dl.reason, dl.error, dl.attempts) == ("poison", None, 1)

    async def _kill_in_order(self, harness: Harness, *event_ids: str) -> None:
        await harness.publish(T, *event_ids)
        msgs = {m.event_id: m for m in await harness.claim(G, T, max_count=len(event_ids))}
        for i in event_ids:
            harness.clock.advance(1)
            assert await harness.transport.kill(msgs[i].receipt, reason="handler", error=i)

    @pytest.mark.asyncio
    async def test_dead_letters_oldest_death_first_with_limit(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await self._kill_in_order(harness, "e1", "e2", "e3", "e4")
        dead = await harness.transport.dead_letters(T, G)
        assert [d.event_id for d in dead] == ["e1", "e2", "e3", "e4"]
        assert [d.error for d in dead] == ["e1", "e2", "e3", "e4"]
        assert dead == sorted(dead, key=lambda d: d.died_at)
        limited = await harness.transport.dead_letters(T, G, limit=2)
        assert [d.event_id for d in limited] == ["e1", "e2"]

    @pytest.mark.asyncio
    async def test_dead_letters_in_death_order_not_publish_order(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, c = await harness.claim(G, T, max_count=3)
        for m in (c, a, b):
            harness.clock.advance(1)
            assert await tr.kill(m.receipt, reason="handler")
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["e3", "e1", "e2"]

    # -- replay and purge -------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_replay_all_goes_to_the_back_with_attempts_reset(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        await harness.claim(G, T, max_count=2, lease=1.5)
        harness.clock.advance(2)  # expired: replay must reset these attempts too
        a, b = await harness.claim(G, T, max_count=2)
        assert await tr.kill(b.receipt, reason="handler")
        assert await tr.kill(a.receipt, reason="handler")
        assert await tr.replay_dead(T, G) == 2
        assert await tr.dead_letters(T, G) == []
        assert _counts(await tr.stats(T, G)) == (3, 0, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert ms[0].event_id == "e3"
        assert sorted(m.event_id for m in ms[1:]) == ["e1", "e2"]
        assert [m.attempt for m in ms] == [1, 1, 1]
        assert [m.body for m in ms[1:]] == [body_of(m.event_id) for m in ms[1:]]

    @pytest.mark.asyncio
    async def test_replay_by_ids(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await self._kill_in_order(harness, "e1", "e2", "e3")
        assert await tr.replay_dead(T, G, ["e2", "unknown"]) == 1
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["e1", "e3"]
        assert await tr.replay_dead(T, G, ["e2"]) == 0
        assert await tr.replay_dead(T, G, []) == 0
        assert await harness.claim_ids(G, T) == ["e2"]

    @pytest.mark.asyncio
    async def test_replayed_event_gets_all_attempts_again(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1")
        for _ in range(2):
            [m] = await harness.claim(G, T, max_attempts=2)
            assert await tr.nack(m.receipt)
        assert await harness.claim(G, T, max_attempts=2) == []
        assert await tr.replay_dead(T, G) == 1
        attempts = []
        for _ in range(2):
            [m] = await harness.claim(G, T, max_attempts=2)
            attempts.append(m.attempt)
            assert await tr.nack(m.receipt)
        assert attempts == [1, 2]
        assert await harness.claim(G, T, max_attempts=2) == []
        [dl] = await tr.dead_letters(T, G)
        assert (dl.reason, dl.attempts) == ("max_attempts", 2)

    @pytest.mark.asyncio
    async def test_purge_dead(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await self._kill_in_order(harness, "e1", "e2", "e3")
        assert await tr.purge_dead(T, G, ["e3", "unknown"]) == 1
        assert [d.event_id for d in await tr.dead_letters(T, G)] == ["e1", "e2"]
        assert await tr.purge_dead(T, G) == 2
        assert await tr.dead_letters(T, G) == []
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)
        assert await tr.replay_dead(T, G) == 0
        assert await harness.claim(G, T) == []

    # -- progress -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_claiming_consumer_drains_everything(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        ids = [f"e{i:02d}" for i in range(30)]
        await harness.publish(T, *ids)
        done: set[str] = set()
        for _ in range(200):  # bounded; each event fails at most twice
            ms = await harness.claim(G, T, max_count=4, lease=1.5, max_attempts=5)
            for m in ms:
                if m.attempt == 1 and int(m.event_id[1:]) % 3 == 0:
                    assert await tr.nack(m.receipt, delay=2.5)
                elif m.attempt <= 2 and int(m.event_id[1:]) % 5 == 0:
                    pass  # crash: the lease expires
                else:
                    assert await tr.ack([m.receipt]) == [True]
                    done.add(m.event_id)
            harness.clock.advance(1)
            if len(done) == len(ids):
                break
        assert sorted(done) == ids
        assert _counts(await tr.stats(T, G)) == (0, 0, 0, 0)

    # -- wait ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_wait_returns_false_after_timeout(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        woke = await asyncio.wait_for(harness.transport.wait(G, [T], 0.05), 2.0)
        assert woke is False

    @pytest.mark.asyncio
    async def test_wait_returns_at_once_when_work_is_ready(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.publish(T, "e1")
        assert await asyncio.wait_for(harness.transport.wait(G, [T], 5.0), 1.0) is True

    @pytest.mark.asyncio
    async def test_wait_is_woken_by_a_publish(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T2, G)
        waiter = asyncio.create_task(harness.transport.wait(G, [T, T2], 10.0))
        await asyncio.sleep(0.02)  # let it block
        assert not waiter.done()
        await harness.publish(T2, "e1")
        assert await asyncio.wait_for(waiter, 1.0) is True
        assert await harness.claim_ids(G, T2) == ["e1"]

    @pytest.mark.asyncio
    async def test_wait_wakes_every_group_reached(self, harness: Harness) -> None:
        await harness.transport.subscribe(T, G)
        await harness.transport.subscribe(T, G2)
        waiters = [asyncio.create_task(harness.transport.wait(g, [T], 10.0)) for g in (G, G, G2)]
        await asyncio.sleep(0.02)
        await harness.publish(T, "e1")
        assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [True, True, True]

    # -- names ----------------------------------------------------------------------------

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
