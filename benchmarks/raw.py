"""Baseline (a): a raw redis-py asyncio client (hiredis parser) doing the least leased work.

- publish: one awaited ``LPUSH`` per event, or a pipeline of ``LPUSH`` per batch.
- drain, the *raw leased worker* of issue 11: one process running, per batch of
  ``BATCH``, one ``EVALSHA`` that does ``LPOP ready <2 x batch>`` (the list holds id,
  body, id, body, ...) and ``ZADD leased <deadline> id ...``, then ``json.loads`` of each
  body, then one ``EVALSHA`` that does ``ZREM leased id ...``. That is the least work any
  leased design needs: no fencing token, no attempt count, no expiry, no fan-out. It is
  timed in this process once warm (steady state), and from the start of a fresh process
  (interpreter start and imports included, see :mod:`benchmarks.fresh`).
- latency: an idle ``BLMOVE`` consumer (each event's ``LREM`` sent with the next
  ``BLMOVE``: one round trip per event); the publisher ``LPUSH``es 1 ms apart.

The bodies are the same encoded envelopes our broker stores, prepared before the clock
starts: the raw client does no encoding, validation or bookkeeping at all.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from benchmarks import fresh
from benchmarks.probes import MemoryProbe

__all__ = [
    "BATCH",
    "RawDrain",
    "fresh_drain",
    "leased_worker",
    "load_leased",
    "raw_drain",
    "raw_latency",
    "raw_publish_rate",
]

READY, LEASED, PROCESSING = "raw:ready", "raw:leased", "raw:processing"
WARMUP = 200
BATCH = 100
"""Events per claim of the raw leased worker (the issue's definition)."""

LEASE_LUA = """
local items = redis.call('LPOP', KEYS[1], ARGV[2])
if not items then return {} end
local args = {}
for i = 1, #items, 2 do
  args[#args + 1] = ARGV[1]
  args[#args + 1] = items[i]
end
redis.call('ZADD', KEYS[2], unpack(args))
return items
"""
"""KEYS: 1 ready  2 leased; ARGV: 1 deadline  2 how many list items (2 per event)."""

ACK_LUA = "return redis.call('ZREM', KEYS[1], unpack(ARGV))"
"""KEYS: 1 leased; ARGV: the ids."""


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=30)


async def raw_publish_rate(url: str, bodies: Sequence[bytes], batch: int | None) -> float:
    """Events/s of awaited single ``LPUSH``es, or pipelines of ``batch`` ``LPUSH``es."""
    client = _client(url)
    try:
        for body in bodies[:WARMUP]:
            await client.lpush("raw:warmup", body)
        gc.collect()
        start = time.perf_counter()
        if batch is None:
            for body in bodies:
                await client.lpush(READY, body)
        else:
            for i in range(0, len(bodies), batch):
                pipe = client.pipeline(transaction=False)
                for body in bodies[i : i + batch]:
                    pipe.lpush(READY, body)
                await pipe.execute()
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    return len(bodies) / elapsed


@dataclass(frozen=True)
class RawDrain:
    """The raw drain's rate and memory readings (before, pending, after)."""

    rate: float
    before: int | None
    pending: int | None
    after: int | None


async def load_leased(client: aioredis.Redis, bodies: Sequence[bytes], start: int = 0) -> None:
    """Queue ``bodies`` for the leased worker: id, body, id, body, ... in one list."""
    for i in range(0, len(bodies), 500):
        items: list[bytes | str] = []
        for n, body in enumerate(bodies[i : i + 500], start + i):
            items += (f"raw-{n}", body)
        await client.rpush(READY, *items)


async def leased_worker(client: aioredis.Redis, n: int) -> float:
    """Drain ``n`` events as the raw leased worker; returns when the last was acked.

    The returned time is ``time.monotonic()`` (one clock for every process of the host).
    """
    lease_sha = await client.script_load(LEASE_LUA)
    ack_sha = await client.script_load(ACK_LUA)
    handled = 0
    loads = json.loads
    while handled < n:
        items = await client.evalsha(lease_sha, 2, READY, LEASED, time.time() + 30, 2 * BATCH)
        if not items:
            raise RuntimeError(f"raw drain found the queue empty after {handled} of {n}")
        ids = items[0::2]
        for body in items[1::2]:
            loads(body)
        await client.evalsha(ack_sha, 1, LEASED, *ids)
        handled += len(ids)
    return time.monotonic()


async def raw_drain(
    url: str, bodies: Sequence[bytes], probe: MemoryProbe | None = None
) -> RawDrain:
    """Steady state: queue ``bodies``, then time the warm leased worker draining them."""
    client = _client(url)
    try:
        await load_leased(client, bodies[:WARMUP], len(bodies))
        await leased_worker(client, WARMUP)
        before = probe.read() if probe else None
        await load_leased(client, bodies)
        pending = probe.read() if probe else None
        gc.collect()
        async with asyncio.timeout(max(30.0, len(bodies) / 500)):
            start = time.monotonic()
            finished = await leased_worker(client, len(bodies))
        after = probe.read() if probe else None
    finally:
        await client.aclose()
    return RawDrain(len(bodies) / (finished - start), before, pending, after)


async def fresh_drain(url: str, bodies: Sequence[bytes]) -> float:
    """Queue ``bodies``, then time a fresh process running the leased worker (events/s)."""
    client = _client(url)
    try:
        await load_leased(client, bodies)
    finally:
        await client.aclose()
    gc.collect()
    return await fresh.spawn("raw", url, len(bodies), timeout=max(30.0, len(bodies) / 500))


async def raw_latency(url: str, bodies: Sequence[bytes], gap: float) -> list[float]:
    """Seconds from each ``LPUSH`` call until an idle ``BLMOVE`` consumer has the body."""
    publisher, consumer = _client(url), _client(url)
    sent: list[float] = []
    seen: list[float] = []
    n = len(bodies)

    async def consume() -> None:
        # One round trip per event: the previous event's LREM goes in the same write as
        # the next BLMOVE. (Awaiting it first made two, and at 1 ms apart under load the
        # consumer fell behind the publisher: a p50 of 346 ms that measured its backlog.)
        done: Any = None
        while len(seen) < n:
            if done is None:
                item = await consumer.blmove(READY, PROCESSING, 1, "RIGHT", "RIGHT")
            else:
                async with consumer.pipeline(transaction=False) as pipe:
                    pipe.lrem(PROCESSING, 1, done)
                    pipe.blmove(READY, PROCESSING, 1, "RIGHT", "RIGHT")
                    _, item = await pipe.execute()
            done = item
            if item is not None:
                seen.append(time.perf_counter() - sent[len(seen)])

    try:
        task = asyncio.create_task(consume())
        async with asyncio.timeout(max(30.0, n / 500) + n * gap):
            await asyncio.sleep(0.3)
            due = time.perf_counter()
            for body in bodies:
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                sent.append(time.perf_counter())
                await publisher.lpush(READY, body)
                due += gap
            await task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
        await consumer.aclose()
    return seen
