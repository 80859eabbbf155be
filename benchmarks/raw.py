"""Baseline (a): a raw redis-py asyncio client (hiredis parser) doing the minimal work.

- publish: one ``RPUSH`` per event, awaited; or a pipeline of ``RPUSH`` per batch.
- drain: per batch, one pipeline of ``LMOVE ready processing`` (as many as our consumer
  claims at once), then the "handler" (nothing), then one pipeline of ``LREM processing``:
  the reliable-queue pattern, two round trips per batch, no decoding.
- latency: an idle ``BLMOVE`` consumer; the publisher ``RPUSH``es 1 ms apart.

The bodies are the same encoded envelopes our broker stores, prepared before the clock
starts: the raw client does no encoding, validation or bookkeeping at all.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from benchmarks.probes import MemoryProbe

__all__ = ["RawDrain", "raw_drain", "raw_latency", "raw_publish_rate"]

READY, PROCESSING = "raw:ready", "raw:processing"
WARMUP = 200


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=30)


async def raw_publish_rate(url: str, bodies: Sequence[bytes], batch: int | None) -> float:
    """Events/s of awaited single ``RPUSH``es, or pipelines of ``batch`` ``RPUSH``es."""
    client = _client(url)
    try:
        for body in bodies[:WARMUP]:
            await client.rpush("raw:warmup", body)
        gc.collect()
        start = time.perf_counter()
        if batch is None:
            for body in bodies:
                await client.rpush(READY, body)
        else:
            for i in range(0, len(bodies), batch):
                pipe = client.pipeline(transaction=False)
                for body in bodies[i : i + batch]:
                    pipe.rpush(READY, body)
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


async def _drain(client: aioredis.Redis, n: int, batch: int) -> None:
    handled = 0
    while handled < n:
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.lmove(READY, PROCESSING, "LEFT", "RIGHT")
        items = [item for item in await pipe.execute() if item is not None]
        if not items:
            raise RuntimeError(f"raw drain found the queue empty after {handled} of {n}")
        pipe = client.pipeline(transaction=False)
        for item in items:
            pipe.lrem(PROCESSING, 1, item)
        await pipe.execute()
        handled += len(items)


async def raw_drain(
    url: str, bodies: Sequence[bytes], batch: int, probe: MemoryProbe | None = None
) -> RawDrain:
    """Pre-push ``bodies``, then move-to-processing and remove them ``batch`` at a time."""
    client = _client(url)
    try:
        await client.rpush(READY, *bodies[:WARMUP])
        await _drain(client, WARMUP, batch)
        before = probe.read() if probe else None
        for i in range(0, len(bodies), 1000):
            await client.rpush(READY, *bodies[i : i + 1000])
        pending = probe.read() if probe else None
        gc.collect()
        async with asyncio.timeout(max(30.0, len(bodies) / 500)):
            start = time.perf_counter()
            await _drain(client, len(bodies), batch)
            elapsed = time.perf_counter() - start
        after = probe.read() if probe else None
    finally:
        await client.aclose()
    return RawDrain(len(bodies) / elapsed, before, pending, after)


async def raw_latency(url: str, bodies: Sequence[bytes], gap: float) -> list[float]:
    """Seconds from each ``RPUSH`` call until an idle ``BLMOVE`` consumer has the body."""
    publisher, consumer = _client(url), _client(url)
    sent: list[float] = []
    seen: list[float] = []
    n = len(bodies)

    async def consume() -> None:
        while len(seen) < n:
            item = await consumer.blmove(READY, PROCESSING, 1, "LEFT", "RIGHT")
            if item is None:
                continue
            seen.append(time.perf_counter() - sent[len(seen)])
            await consumer.lrem(PROCESSING, 1, item)  # type: ignore[arg-type]

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
                await publisher.rpush(READY, body)
                due += gap
            await task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.aclose()
        await consumer.aclose()
    return seen
