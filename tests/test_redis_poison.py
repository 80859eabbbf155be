"""A poison event that kills its process charges nobody else (invariant 11), on Redis.

Real consumer processes (tests/poison_consumer.py) run the Broker; whenever one dies it
is started again, as a supervisor would. Among 200 innocent events, one kills every
process that runs it. After the first crash it runs alone, so its later crashes charge
no other event: every innocent event completes, none is dead, and the poison event is
dead after exactly ``max_attempts`` crashes. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkout import checkout_env
from poison_consumer import POISON_EXIT, Work

from broker_core import Broker
from broker_redis.testing import RedisServer, unique_prefix

CONSUMER = Path(__file__).with_name("poison_consumer.py")
LEASE = 0.5
MAX_ATTEMPTS = 5
INNOCENT = 200
DEADLINE = 90.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("consumers", [1, 2])
async def test_a_poison_event_charges_only_itself(
    redis_server: RedisServer, tmp_path: Path, consumers: int
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?key_prefix={prefix}"
    broker = Broker.from_url(url, group="svc")
    events = [Work(n=n) for n in range(INNOCENT)]
    poison = Work(n=-1, poison=True)
    events.insert(20, poison)  # early, in the middle of a claim's batch
    logs = [tmp_path / f"consumer-{i}.log" for i in range(consumers)]
    processes: list[subprocess.Popen[bytes]] = []
    crashes = 0

    def start(slot: int) -> subprocess.Popen[bytes]:
        with logs[slot].open("ab") as out:
            return subprocess.Popen(
                [sys.executable, str(CONSUMER), redis_server.url, prefix, str(LEASE)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=checkout_env(),
            )

    async with broker:
        await broker.subscribe("work")
        await broker.publish_many(events)
        try:
            processes = [start(slot) for slot in range(consumers)]
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                for slot, process in enumerate(processes):
                    code = process.poll()
                    if code is not None:
                        assert code == POISON_EXIT, logs[slot].read_text()[-2000:]
                        crashes += 1
                        processes[slot] = start(slot)
                [stats] = await broker.stats("work")
                if (stats.ready, stats.leased, stats.delayed) == (0, 0, 0) and stats.dead:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"not settled within {DEADLINE}s: {stats}, {crashes} crashes")
        finally:
            for process in processes:
                process.kill()
                process.wait(timeout=10)
        dead_letters = await broker.dead_letters("work")
    done: dict[int, int] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            word, n, attempt = line.split()
            assert word == "done", line
            done[int(n)] = max(done.get(int(n), 0), int(attempt))
    assert [(d.event_id, d.reason, d.attempts) for d in dead_letters] == [
        (poison.id, "max_attempts", MAX_ATTEMPTS)
    ], "innocent events were dead-lettered for the poison event's crashes"
    assert crashes == MAX_ATTEMPTS
    assert sorted(done) == list(range(INNOCENT)), "an innocent event never completed"
    # Only the poison event's first crash, before anyone knew, cost its neighbours an attempt.
    assert max(done.values()) <= 2, {n: a for n, a in done.items() if a > 2}
