"""Per-key order across real consumer processes of an ordered group on Redis (invariant 8).

Four processes (tests/ordered_consumer.py) share one ordered group; one is SIGKILLed
mid-run and started again. From what every process printed, per key: no two handlings
of one key overlap in time, each event is first handled only after the key's previous
event was handled, and every event is handled. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from checkout import checkout_env
from ordered_consumer import Entry

from broker_core import Broker
from broker_redis.testing import RedisServer, unique_prefix

CONSUMER = Path(__file__).with_name("ordered_consumer.py")
KEYS, PER_KEY, PROCESSES = 25, 24, 4
DEADLINE = 60.0


@pytest.mark.timeout(120)
async def test_an_ordered_group_keeps_per_key_order_across_processes_and_a_crash(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?key_prefix={prefix}"
    logs = [tmp_path / f"consumer-{i}.log" for i in range(PROCESSES + 1)]
    processes: list[subprocess.Popen[bytes]] = []
    killed_at: dict[int, int] = {}  # log index -> monotonic ns of its SIGKILL

    def start(slot: int) -> subprocess.Popen[bytes]:
        with logs[slot].open("ab") as out:
            return subprocess.Popen(
                [sys.executable, str(CONSUMER), redis_server.url, prefix, "0.5"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=checkout_env(),
            )

    publisher = Broker.from_url(url, group="projection")
    async with publisher:
        await publisher.subscribe("ledger", ordered=True)
        try:
            processes = [start(slot) for slot in range(PROCESSES)]
            # Interleaved keys, so that every claim batch holds several of each.
            events = [
                Entry(account=f"acct-{k}", seq=s) for s in range(PER_KEY) for k in range(KEYS)
            ]
            for i in range(0, len(events), 50):
                await publisher.publish_many(events[i : i + 50])
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                [stats] = await publisher.stats("ledger")
                if not killed_at and stats.ready < len(events) * 2 // 3:
                    processes[0].send_signal(signal.SIGKILL)
                    processes[0].wait(timeout=10)
                    killed_at[0] = time.monotonic_ns()
                    processes[0] = start(PROCESSES)  # a fresh log for the new process
                if killed_at and (stats.ready, stats.leased, stats.delayed) == (0, 0, 0):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"not drained within {DEADLINE}s: {stats}")
            assert stats.dead == 0
        finally:
            for process in processes:
                process.kill()
                process.wait(timeout=10)

    # Per key, every handling as (start, end, seq); a handling the SIGKILL cut short
    # ends at the kill.
    handlings: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for index, log in enumerate(logs):
        open_ones: dict[tuple[str, int], int] = {}
        for line in log.read_text().splitlines():
            word, key, seq, ns = line.split()
            if word == "start":
                open_ones[key, int(seq)] = int(ns)
            else:
                handlings[key].append((open_ones.pop((key, int(seq))), int(ns), int(seq)))
        for (key, seq), started in open_ones.items():
            assert index in killed_at, f"consumer {index} left {key}/{seq} unfinished"
            handlings[key].append((started, killed_at[index], seq))
    assert sorted(handlings) == sorted(f"acct-{k}" for k in range(KEYS))
    for key, runs in handlings.items():
        runs.sort()
        for (_, end, _), (start, _, seq) in itertools.pairwise(runs):
            assert start >= end, f"{key}: two handlings at once (seq {seq})"
        first_done: dict[int, int] = {}
        for start, end, seq in runs:
            if seq not in first_done:
                assert seq == 0 or first_done.get(seq - 1, start + 1) <= start, (
                    f"{key}: seq {seq} started before seq {seq - 1} was handled"
                )
                first_done[seq] = end
        assert sorted(first_done) == list(range(PER_KEY)), f"{key}: events never handled"
