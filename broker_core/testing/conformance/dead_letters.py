"""Conformance of attempts and dead letters: how events die, how they are listed and revived."""

from __future__ import annotations

import pytest

from broker_core.testing.conformance.base import ConformanceBase, G, T, _counts
from broker_core.testing.harness import Harness, body_of
from broker_core.text import safe_text

__all__ = ["DeadLetterConformance"]


class DeadLetterConformance(ConformanceBase):
    """Bounded attempts (invariant 6), kill (LEASED -> DEAD), replay (DEAD -> READY), purge.

    Covers attempts counted by every delivery (expiry, nack, delayed nack), an exhausted
    event dying at claim with its last error while claim goes on, the fields and death
    order of dead letters, reasons and errors stored as valid UTF-8 whatever they held,
    replay to the back with attempts reset (all or by ids), and purge (all or by ids).
    """

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
    async def test_dead_letters_are_read_a_page_at_a_time(self, harness: Harness) -> None:
        tr = harness.transport
        await tr.subscribe(T, G)
        await self._kill_in_order(harness, "e1", "e2", "e3", "e4", "e5")
        pages = [
            [d.event_id for d in await tr.dead_letters(T, G, limit=2, offset=offset)]
            for offset in (0, 2, 4, 6)
        ]
        assert pages == [["e1", "e2"], ["e3", "e4"], ["e5"], []]
        [page] = [await tr.dead_letters(T, G, limit=1, offset=3)]
        assert [(d.event_id, d.error, d.body) for d in page] == [("e4", "e4", body_of("e4"))]
        assert await tr.replay_dead(T, G, ["e1"]) == 1  # pages are positions: they shift
        assert [d.event_id for d in await tr.dead_letters(T, G, limit=2, offset=2)] == [
            "e4",
            "e5",
        ]
        with pytest.raises(ValueError, match="offset"):
            await tr.dead_letters(T, G, offset=-1)

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
        [a] = await harness.claim(G, T, max_count=2)
        [b] = await harness.claim(G, T, max_count=2)
        assert await tr.kill(b.receipt, reason="handler")
        assert await tr.kill(a.receipt, reason="handler")
        assert await tr.replay_dead(T, G) == 2
        assert await tr.dead_letters(T, G) == []
        assert _counts(await tr.stats(T, G)) == (3, 0, 0, 0)
        ms = await harness.claim(G, T, max_count=10)
        assert ms[0].event_id == "e3"
        assert sorted(m.event_id for m in ms[1:]) == ["e1", "e2"]
        assert [(m.attempt, m.isolated) for m in ms] == [(1, False)] * 3
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
    async def test_text_that_is_not_utf8_never_breaks_dead_letters(self, harness: Harness) -> None:
        # Lone surrogates: what os.fsdecode makes of a bad file name, in an error message.
        tr = harness.transport
        await tr.subscribe(T, G)
        await harness.publish(T, "e1", "e2", "e3")
        a, b, c = await harness.claim(G, T, max_count=3)
        assert await tr.kill(a.receipt, reason="handler", error="OSError: bad name '\udcff'")
        assert await tr.nack(b.receipt, error="ValueError: \ud800")
        assert await tr.kill(c.receipt, reason="gave up \ud800")
        [b] = await harness.claim(G, T)
        assert await tr.kill(b.receipt, reason="handler")
        letters = {d.event_id: d for d in await tr.dead_letters(T, G)}
        assert set(letters) == {"e1", "e2", "e3"}
        for d in letters.values():
            for text in (d.reason, d.error or ""):
                text.encode("utf-8")  # valid UTF-8: lone surrogates were escaped
        assert letters["e1"].error == safe_text("OSError: bad name '\udcff'")
        assert letters["e2"].error == safe_text("ValueError: \ud800")
        assert letters["e3"].reason == safe_text("gave up \ud800")

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
