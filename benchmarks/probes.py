"""Memory probes: Redis ``used_memory``, or the Python heap for the in-memory transport.

A probe is read only outside timed sections. For ``memory://`` the figures come from a
separate, untimed pass under :mod:`tracemalloc` (tracing slows Python down several times).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Protocol

import redis

__all__ = ["MemoryProbe", "RedisProbe", "TracemallocProbe"]


class MemoryProbe(Protocol):
    """Reads how many bytes the store holds right now."""

    name: str

    def read(self) -> int:
        """Bytes in use now."""
        ...


class RedisProbe:
    """``INFO memory`` ``used_memory`` of the benchmark's server."""

    name = "redis used_memory"

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=10)

    def read(self) -> int:
        # Redis shrinks idle clients' query buffers in its cron (10 times a second), and
        # those count in used_memory: give it a moment so they do not blur the figure.
        time.sleep(0.25)
        return int(self._client.info("memory")["used_memory"])

    def close(self) -> None:
        """Close the probe's connection."""
        self._client.close()


class TracemallocProbe:
    """Bytes traced by :mod:`tracemalloc`; tracing is on between start() and stop()."""

    name = "python heap (tracemalloc)"

    def start(self) -> None:
        """Start tracing (a fresh trace)."""
        gc.collect()
        tracemalloc.start()

    def read(self) -> int:
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
        return current

    def stop(self) -> None:
        """Stop tracing."""
        tracemalloc.stop()
