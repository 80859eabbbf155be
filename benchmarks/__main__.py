"""``python -m benchmarks``: run every scenario and baseline, print the table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from benchmarks import cluster, dramatiq_baseline
from benchmarks.report import markdown, print_report, write_json
from benchmarks.runner import TRANSPORTS, Config, run
from broker_postgres.testing import find_binaries

__all__ = ["main"]

CHOICES = (*TRANSPORTS, "cluster")
"""What ``--transports`` selects: the transports, and the Redis Cluster scenario."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the broker on memory://, and on a redis-server, a "
        "PostgreSQL and a 3-master Redis Cluster it starts itself, against raw redis-py, "
        "Dramatiq and raw asyncpg measured in the same run.",
    )
    parser.add_argument("--events", "-n", type=int, default=20_000, help="N (default 20000)")
    parser.add_argument(
        "--latency-events", type=int, default=1000, help="events of the latency run (1000)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Config.concurrency,
        help="concurrency of the tuned consumer, measured beside the defaults "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=Config.repeat,
        help="rounds of each throughput scenario; the best counts (default %(default)s)",
    )
    parser.add_argument(
        "--transports",
        default=",".join(CHOICES),
        help=f"comma-separated subset of {','.join(CHOICES)} (default all; cluster: the "
        "Redis Cluster scenario, on a 3-master cluster it starts)",
    )
    parser.add_argument("--no-dramatiq", action="store_true", help="skip the Dramatiq baseline")
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="skip the fresh Redis consumer on uvloop (skipped anyway without uvloop)",
    )
    parser.add_argument(
        "--cluster-url",
        default=None,
        metavar="redis+cluster://HOST:PORT[,...]",
        help="run the cluster scenario (implies it) on this existing cluster instead of a "
        "local one: it writes keys under fresh bench-* prefixes, deletes them after each "
        "step, and resets the masters' INFO commandstats (CONFIG RESETSTAT)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write the figures (default bench-results.json)",
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the tables as Markdown here"
    )
    return parser


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the benchmarks; returns the process exit status."""
    args = _parser().parse_args(argv)
    # The table is wide: never wrap it to a pipe's 80 columns.
    console = console or Console(width=max(Console().width, 160))
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    unknown = set(transports) - set(CHOICES)
    if unknown or not transports:
        console.print(f"unknown transports: {', '.join(sorted(unknown)) or '(none)'}")
        return 2
    if args.cluster_url is not None and not args.cluster_url.startswith(
        ("redis+cluster://", "rediss+cluster://")
    ):
        console.print("--cluster-url takes a redis+cluster:// or rediss+cluster:// URL")
        return 2
    with_cluster = "cluster" in transports or args.cluster_url is not None
    transports = tuple(t for t in transports if t != "cluster")
    if with_cluster and args.cluster_url is None and not cluster.available():
        console.print(
            "redis-server or redis-cli is not installed: the Redis Cluster scenario is "
            "skipped (apt install redis-server redis-tools)"
        )
        with_cluster = False
    if "postgres" in transports and find_binaries() is None:
        console.print(
            "PostgreSQL is not installed: its figures are skipped (apt install postgresql)"
        )
        transports = tuple(t for t in transports if t != "postgres")
    with_dramatiq = not args.no_dramatiq and "redis" in transports
    if with_dramatiq and not dramatiq_baseline.available():
        console.print("Dramatiq is not installed: its baseline is skipped (pip install dramatiq)")
        with_dramatiq = False
    config = Config(
        events=args.events,
        latency_events=args.latency_events,
        concurrency=args.concurrency,
        repeat=args.repeat,
        transports=transports,
        dramatiq=with_dramatiq,
        uvloop=not args.no_uvloop and "redis" in transports and _has_uvloop(),
        cluster=with_cluster,
        cluster_url=args.cluster_url,
    )
    results = asyncio.run(run(config, console))
    print_report(results, console)
    write_json(results, args.json)
    console.print(f"figures written to {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(markdown(results) + "\n")
        console.print(f"tables written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
