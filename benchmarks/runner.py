"""Runs every scenario and baseline, shows progress, and turns the measurements into rows.

Order: scenario by scenario; within a scenario, ``repeat`` rounds, and in each round every
contender once (ours on memory://, ours on Redis, raw redis-py, Dramatiq, ours on
PostgreSQL, raw asyncpg). Interleaving
the contenders means a noisy moment on the machine hurts them alike; each throughput
figure is the best of its rounds (like ``timeit``), and every run is kept in the JSON.
Latencies are one run of ``latency_events`` events each; memory figures come from the
first round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console

from benchmarks import cluster, dramatiq_baseline, fresh, ours, raw, raw_postgres
from benchmarks.machine import describe
from benchmarks.noop_plugin import NoopHooks
from benchmarks.payload import ORDERING_KEYS, bodies, make_events, make_keyed_events, sizes
from benchmarks.probes import MemoryProbe, RedisProbe, TracemallocProbe
from benchmarks.results import SCENARIOS, Results, Row, percentile
from benchmarks.server import (
    PostgresServer,
    RedisServer,
    postgres_server,
    redis_server,
    redis_server_binary,
    redis_version,
)
from broker_memory import forget_store

__all__ = ["TRANSPORTS", "Config", "run"]

T = TypeVar("T")

TRANSPORTS = ("memory", "redis", "postgres")
RAW = {"redis": "raw", "postgres": "raw_pg"}
"""The raw client baseline of each transport that has one, by contender name."""
X = "x"  # ratio unit


@dataclass(frozen=True)
class Config:
    """What to run."""

    events: int = 20_000
    latency_events: int = 1000
    gap: float = 0.001
    batch: int = 100
    concurrency: int = 64
    """The tuned variant's ``concurrency``, measured beside our default options."""
    repeat: int = 3
    transports: tuple[str, ...] = TRANSPORTS
    dramatiq: bool = True
    fanout_groups: int = 10
    uvloop: bool = False
    """Also time a fresh Redis consumer on uvloop (when it is installed)."""
    memory_return_tolerance: int = 64 * 1024
    cluster: bool = True
    """Run scenario 6 on a Redis Cluster (:mod:`benchmarks.cluster`)."""
    cluster_url: str | None = None
    """Run it on this existing cluster instead of a local one (no routing ratio then)."""
    partitions: int = 12


@dataclass
class _Progress:
    """Numbered progress lines on the console, and the time of each step."""

    console: Console
    total: int
    done: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    async def step(self, label: str, work: Callable[[], Awaitable[T]]) -> T:
        self.done += 1
        prefix = f"[{self.done:>2}/{self.total}]"
        start = time.perf_counter()
        result = await work()
        elapsed = time.perf_counter() - start
        self.seconds[f"{prefix} {label}"] = round(elapsed, 3)
        self.console.print(
            f"{prefix} {label:<46} {_summary(result):>28}  ({elapsed:5.1f} s)", highlight=False
        )
        return result

    async def thread(self, label: str, work: Callable[[], T]) -> T:
        async def in_thread() -> T:
            return await asyncio.to_thread(work)

        return await self.step(label, in_thread)


def _summary(result: Any) -> str:
    if isinstance(result, float):
        return f"{result:,.0f} events/s"
    if isinstance(result, list) and result and isinstance(result[0], float):
        p50, p99 = percentile(result, 50) * 1e3, percentile(result, 99) * 1e3
        return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    rate = getattr(result, "rate", None)
    return f"{rate:,.0f} events/s" if isinstance(rate, float) else "done"


def fresh_schema() -> str:
    """A PostgreSQL schema name no scenario has used: each starts on empty tables."""
    return f"bench_{uuid.uuid4().hex[:16]}"


class _Store:
    """Where scenarios run: a fresh memory:// store, the emptied Redis, or a new
    PostgreSQL schema, per call.

    The previous memory:// store is forgotten first, so that events a scenario left
    behind do not pile up in the process and slow down the garbage collector for the
    scenarios after it.
    """

    def __init__(
        self, kind: str, server: RedisServer | None, pg: PostgresServer | None = None
    ) -> None:
        self.kind = kind
        self.server = server
        self.pg = pg
        self._name: str | None = None

    def url(self) -> str:
        if self.kind == "memory":
            if self._name is not None:
                forget_store(self._name)
            self._name = f"bench-{uuid.uuid4().hex}"
            return f"memory://{self._name}"
        if self.kind == "postgres":
            assert self.pg is not None
            return self.pg.url(schema=fresh_schema())
        assert self.server is not None
        with self.server.admin() as client:
            client.flushall()
        return str(self.server.url)


@contextlib.contextmanager
def _maybe_server(needed: bool) -> Iterator[RedisServer | None]:
    if not needed:
        yield None
        return
    with redis_server() as server:
        yield server


@contextlib.contextmanager
def _maybe_postgres(needed: bool) -> Iterator[PostgresServer | None]:
    if not needed:
        yield None
        return
    with postgres_server() as server:
        yield server


def _best(values: list[float]) -> float:
    return max(values)


@dataclass
class _Runs:
    """Every measurement of the run, by (scenario, contender)."""

    rates: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    first: dict[tuple[str, str], Any] = field(default_factory=dict)

    def add(self, scenario: str, who: str, result: Any) -> None:
        rate = result if isinstance(result, float) else getattr(result, "rate", None)
        if isinstance(rate, float):
            self.rates.setdefault((scenario, who), []).append(rate)
        self.first.setdefault((scenario, who), result)

    def best(self, scenario: str, who: str) -> float | None:
        values = self.rates.get((scenario, who))
        return _best(values) if values else None

    def samples(self, scenario: str, who: str) -> list[float]:
        return [round(v, 1) for v in self.rates.get((scenario, who), [])]


def _count_steps(config: Config) -> int:
    ours_n = len(config.transports)
    redis = "redis" in config.transports
    raws = sum(kind in config.transports for kind in RAW)
    dramatiq = redis and config.dramatiq
    per_round = 2 * (ours_n + raws)  # publish, publish_many: ours + raw
    per_round += 4 * ours_n + raws  # drain: default, tuned, with hooks, ordered; raw
    per_round += redis * (3 + config.uvloop) + 2 * dramatiq  # fresh processes, Dramatiq
    per_round += 2 * ours_n  # fan-out 1 and k groups
    once = ours_n + raws + (redis and config.dramatiq)  # latency
    once += 3 if "memory" in config.transports else 0  # traced memory passes
    if config.cluster:
        once += cluster.steps(config.repeat, routing=config.cluster_url is None)
    return config.repeat * per_round + once


async def run(config: Config, console: Console) -> Results:
    """Run everything ``config`` asks for; progress goes to ``console``."""
    if config.repeat < 1 or config.events < 1:
        raise ValueError("events and repeat must be at least 1")
    results = Results()
    results.meta = {
        "machine": describe(redis_server_binary()),
        "config": {
            "events": config.events,
            "repeat": config.repeat,
            "latency_events": config.latency_events,
            "latency_gap_ms": config.gap * 1e3,
            "publish_many_batch": config.batch,
            "consumer_options": "BrokerOptions defaults, and concurrency="
            f"{config.concurrency} (tuned)",
            "raw_drain_batch": raw.BATCH,
            "dramatiq_worker_threads": dramatiq_baseline.THREADS,
            "dramatiq_queue_prefetch": dramatiq_baseline.PREFETCH,
            "dramatiq_worker_timeout_ms": dramatiq_baseline.WORKER_TIMEOUT_MS,
            "transports": list(config.transports),
            "cluster": config.cluster,
            "dramatiq": config.dramatiq,
            "figures": "throughput: best of `repeat` interleaved runs; latency: one run; "
            "memory: first run",
        },
        "payload": sizes(),
    }
    progress = _Progress(console, _count_steps(config))
    runs = _Runs()
    spread: cluster.Outcome | None = None
    with (
        _maybe_server("redis" in config.transports) as server,
        _maybe_postgres("postgres" in config.transports) as pg,
    ):
        if server is not None:
            results.meta["machine"]["redis_server_running"] = redis_version(server)
        stores = {kind: _Store(kind, server, pg) for kind in config.transports}
        probe = RedisProbe(server.url) if server is not None else None
        try:
            await _scenarios(config, progress, runs, stores, probe)
            if config.cluster:
                spread = await cluster.measure(
                    progress,
                    runs,
                    console,
                    events=config.events,
                    repeat=config.repeat,
                    batch=config.batch,
                    partitions=config.partitions,
                    server=server,
                    cluster_url=config.cluster_url,
                )
        finally:
            if probe is not None:
                probe.close()
    _rows(results, runs, config)
    if spread is not None:
        results.meta["cluster"] = spread.as_dict()
        cluster.add_rows(results, runs, spread)
    results.meta["step_seconds"] = progress.seconds
    return results


async def _scenarios(
    config: Config,
    progress: _Progress,
    runs: _Runs,
    stores: dict[str, _Store],
    probe: RedisProbe | None,
) -> None:
    n, rounds = config.events, config.repeat
    redis = stores.get("redis")
    pg_store = stores.get("postgres")
    pg = pg_store.pg if pg_store is not None else None
    result: Any  # each step returns its own kind of figure
    dramatiq = redis is not None and config.dramatiq

    def probe_for(kind: str) -> MemoryProbe | None:
        return probe if kind == "redis" else None

    async def each_round(scenario: str, body: Callable[[str], Awaitable[None]]) -> None:
        for r in range(rounds):
            await body(f"{scenario:<12} round {r + 1}/{rounds}")

    # 1. publish, one per call and 100 per call
    for scenario, batch in (("publish", None), ("publish_many", config.batch)):

        async def publish_round(
            tag: str, scenario: str = scenario, batch: int | None = batch
        ) -> None:
            for kind, store in stores.items():
                events = make_events(n)  # fresh ids: publish skips ids the store holds
                result = await progress.step(
                    f"{tag} {kind} ours",
                    lambda s=store, e=events: ours.publish_rate(s.url(), e, batch),  # type: ignore[misc]
                )
                runs.add(scenario, kind, result)
            if redis is not None:
                data = bodies(make_events(n))
                result = await progress.step(
                    f"{tag} redis raw",
                    lambda: raw.raw_publish_rate(redis.url(), data, batch),
                )
                runs.add(scenario, "raw", result)
            if pg is not None:
                data = bodies(make_events(n))
                result = await progress.step(
                    f"{tag} postgres raw",
                    lambda: raw_postgres.raw_publish_rate(pg.url(), fresh_schema(), data, batch),
                )
                runs.add(scenario, "raw_pg", result)

        await each_round(scenario, publish_round)

    # 2. drain (and 5. memory on Redis): warm consumers, then fresh processes
    tuned = {"concurrency": config.concurrency}
    tuned_flags = ("--concurrency", str(config.concurrency))

    async def drain_round(tag: str) -> None:
        result: Any
        for kind, store in stores.items():
            events = make_events(n)
            result = await progress.step(
                f"{tag} {kind} ours",
                lambda s=store, e=events, k=kind: ours.drain(  # type: ignore[misc]
                    s.url(), e, {}, probe_for(k)
                ),
            )
            runs.add("drain", kind, result)
            # Right after the plain drain, so that both meet the machine in the same state.
            events = make_events(n)
            result = await progress.step(
                f"{tag} {kind} ours, no-op hooks",
                lambda s=store, e=events: ours.drain(  # type: ignore[misc]
                    s.url(), e, {}, plugins=[NoopHooks()]
                ),
            )
            runs.add("drain_hooked", kind, result)
            events = make_events(n)
            result = await progress.step(
                f"{tag} {kind} ours, concurrency={config.concurrency}",
                lambda s=store, e=events: ours.drain(s.url(), e, tuned),  # type: ignore[misc]
            )
            runs.add("drain_tuned", kind, result)
            events = make_keyed_events(n)
            result = await progress.step(
                f"{tag} {kind} ours, ordered",
                lambda s=store, e=events: ours.drain(  # type: ignore[misc]
                    s.url(), e, {}, ordered=True
                ),
            )
            runs.add("drain_ordered", kind, result)
        if redis is not None:
            data = bodies(make_events(n))
            result = await progress.step(
                f"{tag} redis raw", lambda: raw.raw_drain(redis.url(), data, probe)
            )
            runs.add("drain", "raw", result)
            fresh_runs: list[tuple[str, tuple[str, ...]]] = [
                ("drain_fresh", ()),
                ("drain_fresh_tuned", tuned_flags),
            ]
            if config.uvloop:
                fresh_runs.append(("drain_fresh_uvloop", ("--loop", "uvloop")))
            for scenario, flags in fresh_runs:
                events = make_events(n)
                result = await progress.step(
                    f"{tag} redis ours, fresh process {' '.join(flags)}".rstrip(),
                    lambda e=events, f=flags: ours.fresh_drain(redis.url(), e, *f),  # type: ignore[misc]
                )
                runs.add(scenario, "redis", result)
            result = await progress.step(
                f"{tag} redis raw, fresh process",
                lambda: raw.fresh_drain(redis.url(), data),
            )
            runs.add("drain_fresh", "raw", result)
        if pg is not None:
            data = bodies(make_events(n))
            result = await progress.step(
                f"{tag} postgres raw",
                lambda: raw_postgres.raw_drain(pg.url(), fresh_schema(), data, config.concurrency),
            )
            runs.add("drain", "raw_pg", result)
        if dramatiq and redis is not None:
            result = await progress.thread(
                f"{tag} redis Dramatiq", lambda: dramatiq_baseline.drain(redis.url(), n, probe)
            )
            runs.add("drain", "dramatiq", result)
            result = await progress.step(
                f"{tag} redis Dramatiq, fresh process",
                lambda: _fresh_dramatiq(redis.url(), n),
            )
            runs.add("drain_fresh", "dramatiq", result)

    await each_round("drain", drain_round)

    # 3. end-to-end latency: one run each
    m, gap = config.latency_events, config.gap
    for kind, store in stores.items():
        result = await progress.step(
            f"latency      {kind} ours",
            lambda s=store: ours.latency(s.url(), m, gap),  # type: ignore[misc]
        )
        runs.add("latency", kind, result)
    if redis is not None:
        data = bodies(make_events(m))
        result = await progress.step(
            "latency      redis raw", lambda: raw.raw_latency(redis.url(), data, gap)
        )
        runs.add("latency", "raw", result)
        if dramatiq:
            result = await progress.thread(
                "latency      redis Dramatiq",
                lambda: dramatiq_baseline.latency(redis.url(), m, gap),
            )
            runs.add("latency", "dramatiq", result)
    if pg is not None:
        data = bodies(make_events(m))
        result = await progress.step(
            "latency      postgres raw",
            lambda: raw_postgres.raw_latency(pg.url(), fresh_schema(), data, gap),
        )
        runs.add("latency", "raw_pg", result)

    # 4. fan-out, 1 vs k groups
    async def fanout_round(tag: str) -> None:
        for kind, store in stores.items():
            for groups in (1, config.fanout_groups):
                events = make_events(n)
                result = await progress.step(
                    f"{tag} {kind} ours, {groups} group{'s' if groups > 1 else ''}",
                    lambda s=store, e=events, g=groups, k=kind: ours.fanout(  # type: ignore[misc]
                        s.url(), e, g, probe_for(k), config.batch
                    ),
                )
                runs.add(f"fanout{groups}", kind, result)

    await each_round("fan-out", fanout_round)

    # 5. memory of the in-memory transport: untimed passes under tracemalloc
    memory = stores.get("memory")
    if memory is not None:
        traced = TracemallocProbe()

        async def under_trace(work: Callable[[], Awaitable[T]]) -> T:
            traced.start()
            try:
                return await work()
            finally:
                traced.stop()

        events = make_events(n)
        result = await progress.step(
            "memory       memory ours, drain (traced)",
            lambda: under_trace(lambda: ours.drain(memory.url(), events, {}, traced)),
        )
        runs.first[("drain_traced", "memory")] = result
        for groups in (1, config.fanout_groups):
            events = make_events(n)
            result = await progress.step(
                f"memory       memory ours, fan-out {groups} (traced)",
                lambda e=events, g=groups: under_trace(  # type: ignore[misc]
                    lambda: ours.fanout(memory.url(), e, g, traced, config.batch)
                ),
            )
            runs.first[(f"fanout{groups}_traced", "memory")] = result


async def _fresh_dramatiq(url: str, n: int) -> float:
    """Enqueue ``n`` messages, then time a fresh Dramatiq worker process draining them."""
    setup = await asyncio.to_thread(dramatiq_baseline.enqueue, url, n)
    try:
        return await fresh.spawn("dramatiq", url, n, timeout=max(60.0, n / 200))
    finally:
        await asyncio.to_thread(setup.close)


def _per_event(before: int | None, after: int | None, n: int) -> float | None:
    if before is None or after is None:
        return None
    return (after - before) / n


def _rows(results: Results, runs: _Runs, config: Config) -> None:
    for kind in config.transports:
        _throughput_rows(results, runs, config, kind)
    for kind in config.transports:
        _latency_rows(results, runs, kind)
    for kind in config.transports:
        _fanout_rows(results, runs, config, kind)
    for kind in config.transports:
        if kind != "postgres":  # no memory probe of the database server
            _memory_rows(results, runs, config, kind)
    order = list(SCENARIOS)
    results.rows.sort(key=lambda row: order.index(row.scenario))


def _throughput_rows(results: Results, runs: _Runs, config: Config, kind: str) -> None:
    redis = kind == "redis"
    for scenario, figure, headline in (
        ("publish", "publish rate", "single publish vs raw awaited LPUSH"),
        ("publish_many", "publish_many rate", "publish_many (100) vs raw pipelined LPUSH"),
    ):
        row = results.add(Row(scenario, kind, figure, "events/s", runs.best(scenario, kind)))
        row.samples = {"ours": runs.samples(scenario, kind)}
        if kind == "postgres":
            row.raw = runs.best(scenario, "raw_pg")
            row.samples["raw"] = runs.samples(scenario, "raw_pg")
            row.note = "raw: asyncpg INSERTs into one table"
        if redis:
            row.raw = runs.best(scenario, "raw")
            row.samples["raw"] = runs.samples(scenario, "raw")
            row.headline = headline
            if scenario == "publish":
                row.target = ">= 0.8x raw awaited LPUSH (one round trip per call)"
            else:
                row.target = ">= 0.8x raw pipelined LPUSH"
            row.met = (row.ratio_raw or 0) >= 0.8
    c = config.concurrency
    if redis:
        drains = [
            ("drain_fresh", "drain_fresh", "from process start, default options", True),
            ("drain_fresh_tuned", "drain_fresh", f"from process start, concurrency={c}", False),
            ("drain_fresh_uvloop", "drain_fresh", "from process start, default, uvloop", False),
            ("drain", "drain", "steady state, default options", False),
            ("drain_tuned", "drain", f"steady state, concurrency={c}", False),
        ]
        for mine, theirs, what, judged in drains:
            if mine == "drain_fresh_uvloop" and not config.uvloop:
                continue
            row = results.add(
                Row("drain", kind, f"drain, {what}", "events/s", runs.best(mine, kind))
            )
            row.raw, row.dramatiq = runs.best(theirs, "raw"), runs.best(theirs, "dramatiq")
            row.samples = {
                "ours": runs.samples(mine, kind),
                "raw": runs.samples(theirs, "raw"),
                "dramatiq": runs.samples(theirs, "dramatiq"),
            }
            row.headline = f"Redis drain, {what}"
            if judged:
                row.target = ">= 0.5x raw leased worker and >= 8x Dramatiq"
                row.met = (row.ratio_raw or 0) >= 0.5 and (
                    row.ratio_dramatiq is None or row.ratio_dramatiq >= 8
                )
    else:
        row = results.add(
            Row("drain", kind, "drain, default options", "events/s", runs.best("drain", kind))
        )
        row.samples = {"ours": runs.samples("drain", kind)}
        if kind == "postgres":
            row.raw = runs.best("drain", "raw_pg")
            row.samples |= {"raw": runs.samples("drain", "raw_pg")}
            row.note = "raw: asyncpg, one SKIP LOCKED lease and one DELETE per batch"
        else:
            row.target = ">= 200,000 events/s"
            row.met = (row.ours or 0) >= 200_000
            row.headline = "memory:// drain, default options"
        tuned = runs.best("drain_tuned", kind)
        row = results.add(Row("drain", kind, f"drain, concurrency={c}", "events/s", tuned))
        row.samples = {"ours": runs.samples("drain_tuned", kind)}
        if kind == "postgres":
            row.raw = runs.best("drain", "raw_pg")
            row.samples |= {"raw": runs.samples("drain", "raw_pg")}
    plain, hooked = runs.best("drain", kind), runs.best("drain_hooked", kind)
    row = results.add(Row("hooks", kind, "drain rate, one no-op hook plugin", "events/s", hooked))
    row.samples = {"ours": runs.samples("drain_hooked", kind)}
    row.note = "claimed, started (async), finished and settled, each a no-op"
    ratio = hooked / plain if hooked and plain else None
    row = results.add(Row("hooks", kind, "drain with the hook plugin / without", X, ratio))
    row.note = "what calling lifecycle hooks costs; without plugins none is called"
    ordered = runs.best("drain_ordered", kind)
    title = f"drain rate, ordered group, {ORDERING_KEYS} keys"
    row = results.add(Row("ordered", kind, title, "events/s", ordered))
    row.samples = {"ours": runs.samples("drain_ordered", kind)}
    row.note = "default options; one event per key at a time"
    ratio = ordered / plain if ordered and plain else None
    row = results.add(Row("ordered", kind, "ordered drain / unordered drain", X, ratio))
    row.note = "what per-key order costs the store and the consumer"


def _latency_rows(results: Results, runs: _Runs, kind: str) -> None:
    ours_lat = runs.first.get(("latency", kind))
    raw_lat = runs.first.get(("latency", RAW.get(kind, "raw")))
    dq_lat = runs.first.get(("latency", "dramatiq"))
    for q, limit in ((50, 1.0), (99, 3.0), (100, None)):
        name = "max" if q == 100 else f"p{q}"
        row = results.add(
            Row(
                "latency",
                kind,
                f"publish-to-handler {name}",
                "ms",
                percentile(ours_lat, q) * 1e3 if ours_lat else None,
                False,
            )
        )
        if kind == "postgres":
            row.raw = percentile(raw_lat, q) * 1e3 if raw_lat else None
            row.note = "LISTEN/NOTIFY wake-up; raw: asyncpg LISTEN, SKIP LOCKED lease"
        if kind == "redis":
            row.raw = percentile(raw_lat, q) * 1e3 if raw_lat else None
            row.dramatiq = percentile(dq_lat, q) * 1e3 if dq_lat else None
            if limit is not None:
                row.target = f"<= {limit:g} ms"
                row.met = row.ours is not None and row.ours <= limit


def _fanout_rows(results: Results, runs: _Runs, config: Config, kind: str) -> None:
    k, n = config.fanout_groups, config.events
    envelope = results.meta["payload"]["envelope_bytes"]
    one, many = runs.best("fanout1", kind), runs.best(f"fanout{k}", kind)
    row = results.add(Row("fanout", kind, "publish_many rate, 1 group", "events/s", one))
    row.samples = {"ours": runs.samples("fanout1", kind)}
    row = results.add(Row("fanout", kind, f"publish_many rate, {k} groups", "events/s", many))
    row.samples = {"ours": runs.samples(f"fanout{k}", kind)}
    cost = one / many if one and many else None
    row = results.add(
        Row("fanout", kind, f"cost per event, {k} groups / 1 group", X, cost, False, "< 3x")
    )
    row.met = cost is not None and cost < 3
    if kind == "postgres":
        row.note = "one delivery row per group per event; the body is stored once"
        return  # the database server's memory is not probed
    redis = kind == "redis"
    first_one = runs.first.get(("fanout1", kind) if redis else ("fanout1_traced", kind))
    first_many = runs.first.get((f"fanout{k}", kind) if redis else (f"fanout{k}_traced", kind))
    unit = "bytes" if redis else "bytes (heap)"
    b1 = _per_event(first_one.before, first_one.after, n) if first_one else None
    bk = _per_event(first_many.before, first_many.after, n) if first_many else None
    results.add(Row("fanout", kind, "memory per event, 1 group", unit, b1, False))
    results.add(Row("fanout", kind, f"memory per event, {k} groups", unit, bk, False))
    extra = (bk - b1) / (k - 1) if b1 is not None and bk is not None else None
    row = results.add(
        Row(
            "fanout",
            kind,
            "memory per extra group per event",
            unit,
            extra,
            False,
            f"body stored once: < {envelope} B (one envelope)",
            note="a second copy of the body would cost at least one envelope",
        )
    )
    row.met = extra is not None and extra < envelope


def _memory_rows(results: Results, runs: _Runs, config: Config, kind: str) -> None:
    n, redis = config.events, kind == "redis"
    drained = runs.first.get(("drain", kind) if redis else ("drain_traced", kind))
    unit = "bytes" if redis else "bytes (heap)"
    pending = _per_event(drained.before, drained.pending, n) if drained else None
    row = results.add(Row("memory", kind, "memory per pending event", unit, pending, False))
    row.note = "no dedup window"
    raw_d, dq_d = runs.first.get(("drain", "raw")), runs.first.get(("drain", "dramatiq"))
    if redis:
        row.raw = _per_event(raw_d.before, raw_d.pending, n) if raw_d else None
        row.dramatiq = _per_event(dq_d.before, dq_d.pending, n) if dq_d else None
    left = None
    if drained and drained.before is not None and drained.after is not None:
        left = float(drained.after - drained.before)
    fanned = runs.first.get(("fanout1", kind) if redis else ("fanout1_traced", kind))
    windowed = _per_event(fanned.before, fanned.after, n) if fanned else None
    dedup = windowed - pending if windowed is not None and pending is not None else None
    row = results.add(
        Row("memory", kind, "dedup record per event, while in its window", unit, dedup, False)
    )
    row.note = "fan-out's memory per event (default dedup_window) minus the above"
    tol = config.memory_return_tolerance
    row = results.add(
        Row("memory", kind, "memory after drain - before", f"{unit}, total", left, False)
    )
    if redis:
        row.target = f"back to the start (|delta| <= {tol // 1024} KiB)"
        row.met = left is not None and abs(left) <= tol
        leftovers = {
            "raw": raw_d.after - raw_d.before if raw_d and raw_d.before is not None else None,
            "dramatiq": dq_d.after - dq_d.before if dq_d and dq_d.before is not None else None,
        }
        row.note = "baselines: " + ", ".join(f"{k} {v:+,} B" for k, v in leftovers.items() if v)
    else:
        row.note = "Python heap: dicts keep their peak table size after deletes"
