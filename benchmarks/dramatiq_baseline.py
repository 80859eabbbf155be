"""Baseline (b): Dramatiq's RedisBroker with a no-op actor.

A real ``dramatiq.Worker`` (its consumer thread and ``THREADS`` worker threads) runs
against the same Redis, on its own namespace, with Dramatiq's default middleware and its
one ack script call per message: in the benchmark's process once warm (steady state), and
in a fresh process (:mod:`benchmarks.fresh`) timed from its spawn. It is tuned as in
issue 11's table: 2 worker threads (on 2 cores more threads only contend for the GIL) and
a queue prefetch of ``PREFETCH`` instead of twice the thread count, without which its
consumer sleeps whenever 4 messages are outstanding; ``worker_timeout`` is lowered from
1000 ms to 100 ms, so an idle worker polls ten times as often (its wake-up latency).
Acks are counted in-process by a middleware's ``after_ack`` hook, so the drain is timed
from ``worker.start()`` (or the spawn) to the last ack, like ours. Messages are enqueued
before the clock starts (one ``actor.send`` each, Dramatiq's own path), with the same
~100-byte data dict our events carry as the actor's argument.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.payload import data_of
from benchmarks.probes import MemoryProbe

__all__ = [
    "PREFETCH",
    "THREADS",
    "WORKER_TIMEOUT_MS",
    "DramatiqDrain",
    "available",
    "drain",
    "enqueue",
    "fresh_drain",
    "latency",
]

THREADS = 2
PREFETCH = 200
WORKER_TIMEOUT_MS = 100
WARMUP = 200
NAMESPACE = "dramatiq-bench"


def available() -> bool:
    """Whether Dramatiq (with its Redis extra) is importable."""
    try:
        import dramatiq.brokers.redis  # noqa: F401
    except ImportError:
        return False
    return True


class _Setup:
    """A RedisBroker, a counting middleware and one actor calling ``body``."""

    def __init__(self, url: str, body: Callable[..., None]) -> None:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware import Middleware

        logging.getLogger("dramatiq").setLevel(logging.ERROR)
        setup = self
        self.lock = threading.Lock()
        self.acked = 0
        self.target = 0
        self.done = threading.Event()
        self.finished_at = 0.0
        self.finished_monotonic = 0.0

        class CountAcks(Middleware):
            def after_ack(self, broker: Any, message: Any) -> None:
                with setup.lock:
                    setup.acked += 1
                    if setup.acked >= setup.target and not setup.done.is_set():
                        setup.finished_at = time.perf_counter()
                        setup.finished_monotonic = time.monotonic()
                        setup.done.set()

        self.broker = RedisBroker(url=url, namespace=NAMESPACE)  # type: ignore[no-untyped-call]
        self.broker.add_middleware(CountAcks())
        dramatiq.set_broker(self.broker)
        self.actor = dramatiq.actor(  # type: ignore[call-overload]
            body, broker=self.broker, actor_name="bench_noop", queue_name="bench", max_retries=0
        )

    def expect(self, n: int) -> None:
        with self.lock:
            self.acked, self.target = 0, n
            self.done = threading.Event()

    def worker(self) -> Any:
        from dramatiq import Worker

        worker = Worker(self.broker, worker_threads=THREADS, worker_timeout=WORKER_TIMEOUT_MS)
        worker.queue_prefetch = PREFETCH  # read by start(); Dramatiq's default is 2 x threads
        return worker

    def run_until_acked(self, n: int, timeout: float) -> float:
        """Start a worker, wait for ``n`` acks; seconds from start to the last ack."""
        self.expect(n)
        worker = self.worker()
        start = time.perf_counter()
        worker.start()
        try:
            if not self.done.wait(timeout):
                raise TimeoutError(f"dramatiq acked {self.acked} of {n} in {timeout:.0f}s")
            return self.finished_at - start
        finally:
            worker.stop(timeout=10_000)

    def close(self, flush: bool = True) -> None:
        if flush:
            self.broker.flush_all()
        self.broker.close()


def _noop(data: dict[str, Any]) -> None:
    pass


def enqueue(url: str, n: int) -> _Setup:
    """Enqueue ``n`` messages for a fresh worker; close the setup once it is done."""
    setup = _Setup(url, _noop)
    for i in range(n):
        setup.actor.send(data_of(i))
    return setup


def fresh_drain(url: str, n: int) -> float:
    """In a fresh process: drain ``n`` queued messages; ``time.monotonic()`` of the last ack."""
    setup = _Setup(url, _noop)
    try:
        setup.run_until_acked(n, max(30.0, n / 200))
        return setup.finished_monotonic
    finally:
        setup.close(flush=False)


@dataclass(frozen=True)
class DramatiqDrain:
    """Dramatiq's drain rate and memory readings (before, pending, after)."""

    rate: float
    before: int | None
    pending: int | None
    after: int | None


def drain(url: str, n: int, probe: MemoryProbe | None = None) -> DramatiqDrain:
    """Enqueue ``n`` messages, then time one in-process worker draining them."""

    setup = _Setup(url, _noop)
    timeout = max(30.0, n / 200)
    try:
        for i in range(WARMUP):
            setup.actor.send(data_of(i))
        setup.run_until_acked(WARMUP, timeout)
        before = probe.read() if probe else None
        for i in range(n):
            setup.actor.send(data_of(i))
        pending = probe.read() if probe else None
        gc.collect()
        seconds = setup.run_until_acked(n, timeout)
        after = probe.read() if probe else None
    finally:
        setup.close()
    return DramatiqDrain(n / seconds, before, pending, after)


def latency(url: str, n: int, gap: float) -> list[float]:
    """Seconds from each ``send`` to the actor running, ``n`` messages ``gap`` s apart."""
    sent: dict[int, float] = {}
    seen: list[float] = []

    def stamp(seq: int) -> None:
        seen.append(time.perf_counter() - sent[seq])

    setup = _Setup(url, stamp)
    setup.expect(n)
    worker = setup.worker()
    worker.start()
    try:
        time.sleep(0.5)  # idle, polling
        due = time.perf_counter()
        for seq in range(n):
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent[seq] = time.perf_counter()
            setup.actor.send(seq)
            due += gap
        if not setup.done.wait(max(30.0, n / 200)):
            raise TimeoutError(f"dramatiq handled {setup.acked} of {n}")
    finally:
        worker.stop(timeout=10_000)
        setup.close()
    return seen
