"""Partitioned topics on Redis: what the shared PartitionConformance cannot see.

Each partition is a unit of keys under a hash tag of its own (broker_redis/keys.py), at
evenly spaced slots, so a topic spreads over every master of a cluster. These tests look
at the keys and the slots, the round trips of a claim, the clients that still believe
an old partition count, and changes of the count refused or cut short. Each runs on one
node and on the session's 3-master cluster unless it is about the cluster alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import pytest_asyncio
import redis
from redis.crc import key_slot

from broker_core.clock import ManualClock
from broker_core.errors import PartitionChangeRefused, TransportError
from broker_core.partitions import partition_of
from broker_core.transport import QueueStats, Receipt
from broker_redis import transport as redis_transport
from broker_redis.keys import SLOTS, Keys, partition_slot, partition_tag, slot_of
from broker_redis.scripts import Call
from broker_redis.testing import RedisCluster
from broker_redis.transport import RedisTransport

T, G, G2 = "orders", "billing", "shipping"
N = 12


def keys_for_each_partition(partitions: int, per_partition: int = 1) -> list[str]:
    """Ordering keys ``k0``, ``k1``, ...: the first ``per_partition`` of each partition."""
    found: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(keys) < per_partition for keys in found.values()):
        key = f"k{n}"
        mine = found[partition_of("", key, partitions)]
        if len(mine) < per_partition:
            mine.append(key)
        n += 1
    return [key for keys in found.values() for key in keys]


@pytest.fixture(params=["node", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The shared server's URL, or the shared cluster's (both flushed afterwards)."""
    fixture = "redis_url" if request.param == "node" else "redis_cluster_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest_asyncio.fixture
async def make(store_url: str, key_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Connected transports on the store, all with the test's key prefix (so several
    processes' views of one store); closed afterwards."""
    made: list[RedisTransport] = []

    async def build(**options: Any) -> RedisTransport:
        tr = RedisTransport(store_url, key_prefix=key_prefix, **options)
        made.append(tr)
        await tr.connect()
        return tr

    yield build
    for tr in made:
        await tr.close()


def admin_of(store_url: str) -> redis.Redis | redis.RedisCluster:
    """A synchronous client of the store, for looking at keys."""
    if store_url.startswith("redis+cluster://"):
        host, port = store_url.removeprefix("redis+cluster://").split(",")[0].split(":")
        return redis.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(store_url)


class ScriptCalls:
    """Counts the round trips (runs of script calls) and script calls of a transport, by
    operation."""

    def __init__(self, tr: RedisTransport) -> None:
        self.round_trips: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        for name in ("_run", "_run_partial"):
            setattr(tr, name, self._counting(getattr(tr, name)))

    def _counting(self, run: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(op: str, calls: Sequence[Call]) -> list[Any]:
            self.round_trips[op] += 1
            self.calls[op] += len(calls)
            result: list[Any] = await run(op, calls)
            return result

        return counted

    def reset(self) -> None:
        self.round_trips.clear()
        self.calls.clear()


# -- slots ---------------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [2, 3, 5, 12, 100, 256])
def test_partition_tags_land_on_evenly_spaced_slots(partitions: int) -> None:
    keys = Keys("app")
    for p in range(partitions):
        tag = partition_tag(T, p, partitions)
        assert tag.startswith(f"{T}~{p}~{partitions}~")
        assert slot_of(tag) == partition_slot(p, partitions)
        assert p * SLOTS // partitions <= slot_of(tag) < (p + 1) * SLOTS // partitions
        # Every key of the unit, the topic's and each group's, is in that slot.
        unit = [*vars_of(keys.topic(T, p, partitions)), *vars_of(keys.group(T, G, p, partitions))]
        assert {key_slot(k.encode()) for k in unit} == {slot_of(tag)}
    # One partition is the topic's own unit, keys unchanged.
    assert keys.topic(T, 0, 1).msg == "app:{orders}:msg"


def vars_of(keys: object) -> list[str]:
    return [getattr(keys, name) for name in keys.__slots__]  # type: ignore[attr-defined]


def test_the_tag_search_finds_the_smallest_salt() -> None:
    # The definition (part of the stored layout): the first counter that hits the slot.
    for topic, p, n in [(T, 0, 12), (T, 11, 12), ("a.b-c_d", 2, 3), ("x", 199, 256)]:
        prefix = f"{topic}~{p}~{n}~"
        salt = next(i for i in range(10**7) if slot_of(f"{prefix}{i}") == partition_slot(p, n))
        assert partition_tag(topic, p, n) == f"{prefix}{salt}"


def test_twelve_partitions_spread_four_per_master(redis_cluster: RedisCluster) -> None:
    keys = Keys("app")
    with redis_cluster.masters()[0].admin() as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
        owners = Counter()
        for p in range(N):
            msg = keys.topic(T, p, N).msg
            # Redis computes the slot the same way.
            assert client.execute_command("CLUSTER", "KEYSLOT", msg) == partition_slot(p, N)
            [port] = [m[1] for start, end, m, *_ in ranges if start <= partition_slot(p, N) <= end]
            owners[port] += 1
    assert sorted(owners.values()) == [4, 4, 4], owners


async def test_each_master_serves_a_third_of_a_partitioned_topic(
    redis_cluster: RedisCluster, redis_cluster_url: str, key_prefix: str
) -> None:
    def evalsha_calls() -> list[int]:
        counts = []
        for master in redis_cluster.masters():
            with master.admin() as client:
                stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
                counts.append(int(stats["calls"]))
        return counts

    tr = RedisTransport(redis_cluster_url, key_prefix=key_prefix)
    await tr.connect()
    try:
        await tr.configure_topic(T, partitions=N)
        await tr.subscribe(T, G)
        keys = keys_for_each_partition(N)
        before = evalsha_calls()
        for batch in range(10):
            events = [(f"e{batch}-{n}", b"x") for n in range(4 * N)]
            await tr.publish(T, events, keys=[keys[n % N] for n in range(4 * N)])
        for _ in range(40):
            ms = await tr.claim(G, [T], max_count=24, lease=30, max_attempts=5)
            if not ms:
                break
            await tr.ack([m.receipt for m in ms])
        assert await tr.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)
        shares = [after - b for after, b in zip(evalsha_calls(), before, strict=True)]
        total = sum(shares)
        assert all(abs(share / total - 1 / 3) <= 0.10 for share in shares), shares
    finally:
        await tr.close()


# -- routing, fan-out, order -----------------------------------------------------------------


async def test_events_go_to_their_keys_partition_and_keep_its_order(
    make: Callable[..., Any], store_url: str, key_prefix: str
) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=N)
    await tr.subscribe(T, G, ordered=True)
    await tr.subscribe(T, G2)
    keys = keys_for_each_partition(N, per_partition=2)
    events = [(f"e{n:03d}", b"x") for n in range(10 * len(keys))]
    event_keys = [keys[n % len(keys)] for n in range(len(events))]
    assert await tr.publish(T, events, keys=event_keys) == 2 * len(events)
    # Each body lives in its key's unit, and only there.
    keyring = Keys(key_prefix)
    client = admin_of(store_url)
    try:
        for p in range(N):
            stored = {k.decode() for k in client.hkeys(keyring.topic(T, p, N).msg)}
            assert stored == {
                i
                for (i, _), k in zip(events, event_keys, strict=True)
                if partition_of(i, k, N) == p
            }
        assert not client.exists(keyring.topic(T).msg)  # the topic's own unit holds none
    finally:
        client.close()
    # The ordered group: per key in publish order, whatever the claims' sizes.
    seen: list[str] = []
    for _ in range(100):
        ms = await tr.claim(G, [T], max_count=7, lease=30, max_attempts=5)
        if not ms:
            break
        for m in ms:
            # The receipt names the unit of the event's key.
            assert m.receipt.token.startswith(f"{partition_of(m.event_id, m.key, N)}.{N}.")
        assert await tr.ack([m.receipt for m in ms]) == [True] * len(ms)
        seen += [m.event_id for m in ms]
    for key in keys:
        mine = [i for (i, _), k in zip(events, event_keys, strict=True) if k == key]
        assert [i for i in seen if i in mine] == mine, key
    assert sorted(seen) == [i for i, _ in events]
    stats = await tr.stats(T, G2)
    assert (stats.ready, stats.acked) == (len(events), 0)
    assert (await tr.stats(T, G)).acked == len(events)


async def test_stats_dead_letters_and_history_are_summed_over_partitions(
    make: Callable[..., Any],
) -> None:
    clock = ManualClock(1000.0)
    tr = await make(clock=clock)
    await tr.configure_topic(T, partitions=4, max_events=2)
    await tr.subscribe(T, G)
    keys = keys_for_each_partition(4, per_partition=1)
    events = [(f"e{n}", b"x") for n in range(20)]
    await tr.publish(T, events, keys=[keys[n % 4] for n in range(20)])
    stats = await tr.topic_stats(T)
    # max_events limits each partition's history: the newest 2 of each of the 4.
    assert (stats.retained, stats.published, stats.partitions) == (8, 20, 4)
    ms = await tr.claim(G, [T], max_count=20, lease=60, max_attempts=5)
    for m in ms:
        clock.advance(1)
        assert await tr.kill(m.receipt, reason="handler")
    letters = await tr.dead_letters(T, G, limit=20)
    assert [d.event_id for d in letters] == [m.event_id for m in ms]
    assert [d.died_at for d in letters] == sorted(d.died_at for d in letters)
    assert await tr.stats(T, G) == QueueStats(T, G, 0, 0, 0, 20)
    assert await tr.purge_dead(T, G) == 20
    assert await tr.groups(T) == [G]
    assert await tr.topics() == [T]


async def test_replaying_every_dead_event_goes_by_batches_on_each_partition(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each partition is asked again while it has more, and only it: one with 2,500 dead
    # takes three calls, one with 10 takes one.
    tr = await make()
    await tr.configure_topic(T, partitions=2)
    await tr.subscribe(T, G)
    big, small = keys_for_each_partition(2, per_partition=1)
    events = [(f"e{n:04d}", b"x") for n in range(2510)]
    await tr.publish(T, events, keys=[big] * 2500 + [small] * 10)
    for m in await tr.claim(G, [T], max_count=2510, lease=60, max_attempts=5):
        assert await tr.kill(m.receipt, reason="handler")
    run = tr._run
    calls: Counter[str] = Counter()  # per hash tag: per partition

    async def counted(op: str, batch: Sequence[Call]) -> list[Any]:
        if op == "replay_dead":
            calls.update(c.keys[0].split("{")[1].split("}")[0] for c in batch)
        return await run(op, batch)

    monkeypatch.setattr(tr, "_run", counted)
    assert await tr.replay_dead(T, G) == 2510
    assert sorted(calls.values()) == [1, 3]
    assert await tr.stats(T, G) == QueueStats(T, G, 2510, 0, 0, 0)


# -- claims -----------------------------------------------------------------------------------


async def test_a_claim_takes_at_most_two_round_trips(make: Callable[..., Any]) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=N)
    await tr.subscribe(T, G)
    [key] = [k for k in keys_for_each_partition(N) if partition_of("", k, N) == N - 1]
    await tr.publish(T, [(f"e{n}", b"x") for n in range(3)], keys=[key] * 3)
    counted = ScriptCalls(tr)
    for n in range(3):  # wherever the rotation starts, the one busy unit is found
        counted.reset()
        [m] = await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5)
        assert m.event_id == f"e{n}"
        assert counted.round_trips["claim"] <= 2, counted.round_trips
    counted.reset()
    assert await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5) == []
    assert counted.round_trips["claim"] == 1
    assert counted.calls["claim"] == N  # one look at each unit


async def test_a_topic_of_one_partition_costs_one_script_call(make: Callable[..., Any]) -> None:
    tr = await make()
    await tr.subscribe(T, G)
    await tr.publish(T, [("e0", b"x")])  # learns the groups (one more call), as ever
    [m] = await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5)
    await tr.ack([m.receipt])
    counted = ScriptCalls(tr)
    await tr.publish(T, [("e1", b"x"), ("e2", b"y")])
    [m1, m2] = await tr.claim(G, [T], max_count=2, lease=30, max_attempts=5)
    await tr.ack([m1.receipt, m2.receipt])
    assert counted.calls == Counter({"publish": 1, "claim": 1, "ack": 1})
    assert counted.round_trips == counted.calls


async def test_a_consumer_draining_partitions_takes_from_all_of_them(
    make: Callable[..., Any],
) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=N)
    await tr.subscribe(T, G)
    keys = keys_for_each_partition(N)
    await tr.publish(T, [(f"e{n}", b"x") for n in range(5 * N)], keys=keys * 5)
    # A claim shares its count out: one from each partition.
    ms = await tr.claim(G, [T], max_count=N, lease=30, max_attempts=5)
    assert sorted(int(m.receipt.token.split(".")[0]) for m in ms) == list(range(N))
    # Small claims start from the next unit each time: every partition is served.
    partitions = []
    for _ in range(N):
        [m] = await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5)
        partitions.append(int(m.receipt.token.split(".")[0]))
    assert sorted(partitions) == list(range(N))


async def test_a_receipt_naming_no_unit_is_stale(make: Callable[..., Any]) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=4)
    await tr.subscribe(T, G)
    await tr.publish(T, [("e1", b"x")])
    [m] = await tr.claim(G, [T], max_count=1, lease=30, max_attempts=5)
    _, rest = m.receipt.token.split(".", 1)
    for token in (f"9.{rest}", f"0.{rest}".replace(".4.", ".7.", 1), "junk"):
        assert await tr.ack([Receipt(T, G, "e1", token)]) == [False]
    assert await tr.ack([m.receipt]) == [True]


# -- changes of the count ------------------------------------------------------------------


async def test_a_client_with_an_old_count_follows_a_change(make: Callable[..., Any]) -> None:
    operator, stale = await make(), await make()
    await stale.subscribe(T, G)
    await stale.publish(T, [("before", b"x")])
    [m] = await stale.claim(G, [T], max_count=1, lease=30, max_attempts=5)
    assert await stale.ack([m.receipt]) == [True]
    await operator.configure_topic(T, partitions=N)
    # The stale client's calls are refused by its old unit, and it learns the count.
    keys = keys_for_each_partition(N)
    assert await stale.publish(T, [(f"e{n}", b"x") for n in range(N)], keys=keys) == N
    assert stale._partitions[T] == N
    other = await make()
    await other.subscribe(T, G)  # still subscribed, not anew
    ms = await other.claim(G, [T], max_count=2 * N, lease=30, max_attempts=5)
    assert sorted(m.event_id for m in ms) == sorted(f"e{n}" for n in range(N))
    await other.ack([m.receipt for m in ms])
    # And back to one partition: a consumer that believes 12 follows too.
    await operator.configure_topic(T, partitions=1)
    await operator.publish(T, [("after", b"x")])
    [m] = await other.claim(G, [T], max_count=5, lease=30, max_attempts=5)
    assert m.event_id == "after" and T not in other._partitions
    assert (await other.stats(T, G)).acked == N + 1  # the counters went along


async def test_a_refused_change_says_why_and_changes_nothing(
    make: Callable[..., Any], store_url: str, key_prefix: str
) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=4, max_age=60.0)
    await tr.subscribe(T, G)
    await tr.subscribe(T, G2)
    await tr.publish(T, [("e1", b"x")])
    [m] = await tr.claim(G2, [T], max_count=1, lease=30, max_attempts=5)
    await tr.ack([m.receipt])
    with pytest.raises(PartitionChangeRefused) as refused:
        await tr.configure_topic(T, partitions=N)
    message = str(refused.value)
    assert "'orders' cannot go from 4 partitions to 12: group 'billing' holds events" in message
    assert "Nothing was changed" in message
    # Every unit is open again: nothing waits, the count and retention are as they were.
    client = admin_of(store_url)
    try:
        keyring = Keys(key_prefix)
        assert client.get(keyring.topic(T).layout) == b"4"
        assert [client.get(keyring.topic(T, p, 4).layout) for p in range(4)] == [b"4"] * 4
    finally:
        client.close()
    stats = await tr.topic_stats(T)
    assert (stats.partitions, stats.max_age) == (4, 60.0)
    assert await tr.publish(T, [("e2", b"x")]) == 2
    assert (await tr.stats(T, G)).ready == 2


async def test_a_change_cut_short_is_completed_by_the_next_configure(
    make: Callable[..., Any],
    store_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator, publisher = await make(), await make()
    await publisher.subscribe(T, G, ordered=True)
    await publisher.publish(T, [("e1", b"x")])
    [m] = await publisher.claim(G, [T], max_count=1, lease=30, max_attempts=5)
    await publisher.ack([m.receipt])
    each = operator._each

    async def crash_at_drop(op: str, calls: dict[Any, Call]) -> dict[Any, Any]:
        if any(call.script.name == "drop_unit" for call in calls.values()):
            raise TransportError("the operator's process died")
        return await each(op, calls)

    monkeypatch.setattr(operator, "_each", crash_at_drop)
    with pytest.raises(TransportError, match="died"):
        await operator.configure_topic(T, partitions=N)
    monkeypatch.setattr(operator, "_each", each)
    # Half done: the old unit is sealed, the new ones written. Publishers wait, then say so.
    monkeypatch.setattr(redis_transport, "_CHANGE_WAIT", 0.2)
    with pytest.raises(TransportError, match="run it again"):
        await publisher.publish(T, [("e2", b"x")])
    await operator.configure_topic(T)  # any configure completes the change
    assert (await operator.topic_stats(T)).partitions == N
    assert await publisher.publish(T, [("e2", b"x")]) == 1
    assert await operator.groups(T) == [G]
    with pytest.raises(Exception, match="ordered=True"):  # the options went along
        await operator.subscribe(T, G, ordered=False)
    client = admin_of(store_url)
    try:
        keyring = Keys(key_prefix)
        # Nothing of the old layout is left but its registry entry.
        own = {k.decode() for k in client.keys(f"{key_prefix}:{{{T}}}:*")}
        assert own == {keyring.topic(T).layout}
        assert (await operator.stats(T, G)).acked == 1
    finally:
        client.close()


async def test_units_a_cut_short_seal_left_closed_open_at_the_next_configure(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=4)
    await tr.subscribe(T, G)
    # As if a change's process died after sealing two units, before the change took
    # effect (the count still reads 4).
    sealed = [redis_transport._Unit(T, p, 4) for p in (1, 2)]
    script = redis_transport.load_script("seal")
    await tr._each(
        "configure_topic",
        {
            u: script.call(["", 1000, 4, "4>2", 1, G], topic=tr._topic_keys(u),
                           groups=[tr._group_keys(u, G)])
            for u in sealed
        },
    )  # fmt: skip
    keys = keys_for_each_partition(4)
    monkeypatch.setattr(redis_transport, "_CHANGE_WAIT", 0.2)
    with pytest.raises(TransportError, match="run it again"):
        await tr.publish(T, [("e1", b"x")], keys=[keys[1]])
    assert await tr.publish(T, [("e0", b"x")], keys=[keys[0]]) == 1  # open units work
    await tr.configure_topic(T, partitions=4)  # the same count: opens them again
    assert await tr.publish(T, [("e1", b"x")], keys=[keys[1]]) == 1
    assert (await tr.stats(T, G)).ready == 2


async def test_a_change_is_refused_while_any_partition_retains_history(
    make: Callable[..., Any],
) -> None:
    tr = await make()
    await tr.configure_topic(T, partitions=2, max_events=100)
    await tr.publish(T, [(f"e{n}", b"x") for n in range(10)])
    with pytest.raises(PartitionChangeRefused, match="history retains events"):
        await tr.configure_topic(T, partitions=3)
    await tr.configure_topic(T)  # no retention: the history goes, on every partition
    assert (await tr.topic_stats(T)).retained == 0
    await tr.configure_topic(T, max_age=3600.0)
    await tr.configure_topic(T, partitions=3)  # a count alone keeps the retention
    stats = await tr.topic_stats(T)
    assert (stats.partitions, stats.max_age, stats.max_events) == (3, 3600.0, None)
    await tr.publish(T, [("e1", b"x")])
    with pytest.raises(PartitionChangeRefused, match="history retains events"):
        await tr.configure_topic(T, partitions=1)
    stats = await tr.topic_stats(T)
    assert (stats.retained, stats.partitions, stats.max_age) == (1, 3, 3600.0)


async def test_changes_while_publishers_and_consumers_run_lose_nothing(
    make: Callable[..., Any],
) -> None:
    operator, publisher, consumer = await make(), await make(), await make()
    await consumer.subscribe(T, G)
    running = True
    acked: Counter[str] = Counter()

    async def publish_all() -> None:
        nonlocal running
        for n in range(60):
            assert await publisher.publish(T, [(f"e{n}", b"x")], keys=[f"k{n % 7}"]) == 1
            await asyncio.sleep(0.002)
        running = False

    async def consume() -> None:
        for _ in range(2000):
            ms = await consumer.claim(G, [T], max_count=10, lease=30, max_attempts=5)
            if ms:
                assert await consumer.ack([m.receipt for m in ms]) == [True] * len(ms)
                acked.update(m.event_id for m in ms)
            elif not running:
                return
            else:
                await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(publish_all()), asyncio.create_task(consume())]
    changes, wanted = 0, 4
    while running:
        try:
            await operator.configure_topic(T, partitions=wanted)
            changes += 1
            wanted = 5 - wanted  # 4, 1, 4, ...
        except PartitionChangeRefused:  # an event was on its way: try again
            pass
        await asyncio.sleep(0.003)
    await asyncio.gather(*tasks)
    assert changes >= 1
    assert acked == Counter(f"e{n}" for n in range(60))  # each once, none lost
    assert await consumer.stats(T, G) == QueueStats(T, G, 0, 0, 0, 0)


@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_subscribe_from_history_trims_in_several_calls_on_each_partition(
    make: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    monkeypatch.setattr(redis_transport, "_TRIM_STEP", 10)
    clock = ManualClock(1000.0)
    tr = await make(clock=clock)
    await tr.configure_topic(T, partitions=partitions, max_age=60.0)
    await tr.publish(T, [(f"old{n}", b"x") for n in range(100)])
    clock.advance(61)  # all of them expired, none trimmed yet
    await tr.publish(T, [("new", b"x")])  # trims a bounded part only
    await tr.subscribe(T, G, history=3600.0)  # trims the rest, 10 per call, then copies
    assert await tr.groups(T) == [G]
    ms = await tr.claim(G, [T], max_count=10, lease=30, max_attempts=5)
    assert [m.event_id for m in ms] == ["new"]
    assert (await tr.topic_stats(T)).retained == 1


async def test_a_claim_goes_on_past_queues_whose_events_it_buries(
    make: Callable[..., Any],
) -> None:
    clock = ManualClock(1000.0)
    tr = await make(clock=clock)
    keys = keys_for_each_partition(4)
    for start in range(4):  # a claim starting at each of the queues
        topic = f"t{start}"
        await tr.configure_topic(topic, partitions=4)
        await tr.subscribe(topic, G)
        # Partitions 0-2 each hold an event whose one attempt is used up (its lease
        # ran out), partition 3 two fresh ones.
        await tr.publish(topic, [(f"x{p}", b"x") for p in range(3)], keys=keys[:3])
        assert len(await tr.claim(G, [topic], max_count=3, lease=1, max_attempts=1)) == 3
        clock.advance(2)
        await tr.publish(topic, [("f1", b"x"), ("f2", b"x")], keys=[keys[3]] * 2)
        tr._turn = start - 1  # the next claim starts at queue `start`
        ms = await tr.claim(G, [topic], max_count=2, lease=30, max_attempts=1)
        assert sorted(m.event_id for m in ms) == ["f1", "f2"], start
        stats = await tr.stats(topic, G)  # the used-up ones it met are dead, others wait
        assert (stats.dead + stats.ready, stats.leased) == (3, 2)
