"""Baseline (c): a raw asyncpg client doing the minimal ``FOR UPDATE SKIP LOCKED`` work.

- publish: one awaited ``INSERT`` per event; or one ``INSERT ... SELECT unnest($1)`` per
  batch.
- drain: per batch, one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
  RETURNING`` that leases as many rows as our consumer claims at once, then the
  "handler" (nothing), then one ``DELETE ... WHERE id = ANY($1)``: the leased-queue
  pattern, two round trips per batch, no attempts, tokens, deadlines, groups or
  decoding.
- latency: an idle consumer on ``LISTEN``; the publisher inserts and notifies in one
  statement, 1 ms apart, and the consumer claims and deletes on each notification.

The table is one of its own (in the schema the runner gives), with the same encoded
envelopes as bodies, prepared before the clock starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Sequence

import asyncpg

__all__ = ["raw_drain", "raw_latency", "raw_publish_rate"]

WARMUP = 200
CHANNEL = "raw_queue"

_CLAIM = (
    "UPDATE {s}.raw_queue SET leased = true WHERE id IN (SELECT id FROM {s}.raw_queue "
    "WHERE NOT leased ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, body"
)


async def _connect(url: str, schema: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await conn.execute(
        f"CREATE SCHEMA IF NOT EXISTS {schema}; "
        f"CREATE TABLE IF NOT EXISTS {schema}.raw_queue (id bigserial PRIMARY KEY, "
        "body bytea NOT NULL, leased boolean NOT NULL DEFAULT false); "
        f"CREATE INDEX IF NOT EXISTS raw_ready ON {schema}.raw_queue (id) WHERE NOT leased"
    )
    return conn


async def raw_publish_rate(
    url: str, schema: str, bodies: Sequence[bytes], batch: int | None
) -> float:
    """Events/s of awaited single ``INSERT``s, or one multi-row ``INSERT`` per batch."""
    conn = await _connect(url, schema)
    insert = f"INSERT INTO {schema}.raw_queue (body) VALUES ($1)"
    insert_many = f"INSERT INTO {schema}.raw_queue (body) SELECT unnest($1::bytea[])"
    try:
        for body in bodies[:WARMUP]:
            await conn.execute(insert, body)
        gc.collect()
        start = time.perf_counter()
        if batch is None:
            for body in bodies:
                await conn.execute(insert, body)
        else:
            for i in range(0, len(bodies), batch):
                await conn.execute(insert_many, list(bodies[i : i + batch]))
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return len(bodies) / elapsed


async def _drain(conn: asyncpg.Connection, schema: str, n: int, batch: int) -> None:
    claim = _CLAIM.format(s=schema)
    delete = f"DELETE FROM {schema}.raw_queue WHERE id = ANY($1)"
    handled = 0
    while handled < n:
        rows = await conn.fetch(claim, batch)
        if not rows:
            raise RuntimeError(f"raw drain found the queue empty after {handled} of {n}")
        await conn.execute(delete, [r["id"] for r in rows])
        handled += len(rows)


async def raw_drain(url: str, schema: str, bodies: Sequence[bytes], batch: int) -> float:
    """Pre-insert ``bodies``, then lease and delete them ``batch`` at a time; events/s."""
    conn = await _connect(url, schema)
    insert_many = f"INSERT INTO {schema}.raw_queue (body) SELECT unnest($1::bytea[])"
    try:
        await conn.execute(insert_many, list(bodies[:WARMUP]))
        await _drain(conn, schema, WARMUP, batch)
        for i in range(0, len(bodies), 1000):
            await conn.execute(insert_many, list(bodies[i : i + 1000]))
        await conn.execute(f"VACUUM ANALYZE {schema}.raw_queue")
        gc.collect()
        async with asyncio.timeout(max(30.0, len(bodies) / 500)):
            start = time.perf_counter()
            await _drain(conn, schema, len(bodies), batch)
            elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return len(bodies) / elapsed


async def raw_latency(url: str, schema: str, bodies: Sequence[bytes], gap: float) -> list[float]:
    """Seconds from each insert-and-notify until an idle LISTEN consumer has leased it."""
    publisher, consumer = await _connect(url, schema), await _connect(url, schema)
    claim = _CLAIM.format(s=schema)
    delete = f"DELETE FROM {schema}.raw_queue WHERE id = ANY($1)"
    publish = (
        f"WITH i AS (INSERT INTO {schema}.raw_queue (body) VALUES ($1) RETURNING id) "
        f"SELECT pg_notify('{CHANNEL}', '') FROM i"
    )
    sent: list[float] = []
    seen: list[float] = []
    woken = asyncio.Event()
    n = len(bodies)

    async def consume() -> None:
        while len(seen) < n:
            rows = await consumer.fetch(claim, 100)
            if not rows:
                woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), 1.0)
                continue
            now = time.perf_counter()
            for _ in rows:
                seen.append(now - sent[len(seen)])
            await consumer.execute(delete, [r["id"] for r in rows])

    await consumer.add_listener(CHANNEL, lambda *_: woken.set())
    task = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(max(30.0, n / 500) + n * gap):
            await asyncio.sleep(0.3)
            due = time.perf_counter()
            for body in bodies:
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                sent.append(time.perf_counter())
                await publisher.execute(publish, body)
                due += gap
            await task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
        await consumer.close()
    return seen
