"""The ``broker`` command line: the demo, installed plugins, and operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker_core import loops
from broker_core.broker import Broker, Start, parse_start
from broker_core.demo import run_demo
from broker_core.errors import BrokerError
from broker_core.names import validate_topic
from broker_core.plugins import installed_transports, plugin_manager
from broker_core.tail import tail as run_tail
from broker_core.tail import tail_group
from broker_core.urls import redact

if TYPE_CHECKING:
    from broker_prometheus import PrometheusMetrics

__all__ = ["app", "main"]

app = typer.Typer(help="An embedded event broker for Python microservices.", no_args_is_help=True)
console = Console()
T = TypeVar("T")

Url = Annotated[str, typer.Option("--url", envvar="BROKER_URL", help="Transport URL.")]
StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="BROKER_URL",
        help="URL of the store your services share, e.g. redis://host:6379/0 (not memory://).",
        show_default=False,
    ),
]
TopicArg = Annotated[str, typer.Option("--topic", help="Topic name.")]
GroupArg = Annotated[str, typer.Option("--group", help="Group (subscribing service) name.")]


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return loops.run(make())
    except BrokerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def demo(
    url: Url = "memory://",
    events: Annotated[int, typer.Option(min=10, help="Events to publish.")] = 1000,
) -> None:
    """Two groups, two consumers each, a crash, retries and a poison event; counts losses."""
    logging.basicConfig(level=logging.CRITICAL)
    with Progress(
        TextColumn("[bold]settling events"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("demo", total=events * 2)
        report = _run(
            lambda: run_demo(
                url, events, progress=lambda done, total: bar.update(task, completed=done)
            )
        )
    table = Table(title=f"broker demo on {redact(url)} ({report.crashed} crashed mid-run)")
    for column in ("group", "published", "delivered", "redelivered", "dead", "lost", "events/s"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group in report.groups:
        table.add_row(
            group.group,
            str(group.published),
            str(group.delivered),
            str(group.redelivered),
            str(group.dead),
            f"[{'red' if group.lost else 'green'}]{group.lost}",
            f"{group.events_per_second:,.0f}",
        )
    console.print(table)
    if report.lost:
        console.print(f"[red]{report.lost} events lost[/red]")
        raise typer.Exit(1)
    console.print("[green]nothing lost[/green]")


_ABORT_DEADLINE = 2.0
"""Seconds an aborted ``broker run`` gives the broker to end before the process exits anyway."""


@app.command()
def run(
    target: Annotated[
        str,
        typer.Argument(help="Where your broker is: 'package.module:name'.", metavar="MODULE:NAME"),
    ],
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics "
            "(needs the 'prometheus' extra).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics server listens on.")
    ] = "127.0.0.1",
    metrics_refresh: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two reads of the queue gauges.")
    ] = 5.0,
) -> None:
    """Run the handlers of your service's broker until SIGTERM or Ctrl-C, then stop gracefully.

    NAME is a Broker, or a function returning one, with its handlers registered. A second
    SIGTERM or Ctrl-C aborts the graceful stop as a crash would: nothing more is settled,
    the events still held return to other consumers when their leases expire, and the
    process exits with status 128 + the signal's number, within seconds even if a handler
    is stuck.

    With ``--metrics-port``, every broker the process builds reports to a registry of its
    own, served at ``/metrics`` (docs/operations.md, "Prometheus").
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with _prometheus(metrics_host, metrics_port, metrics_refresh) as metrics:
        broker = _load_broker(target)
        if metrics is not None:
            metrics.watch_queues(broker)
        _serve_until_signalled(broker)


def _serve_until_signalled(broker: Broker) -> None:
    """Run ``broker`` until a signal stops it; a second signal aborts it."""
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            console.print(
                f"stopping: running handlers get {broker.options.shutdown_grace:g} s to "
                "finish (signal again to abort)"
            )
            broker.stop()
        elif len(signals) == 2:
            console.print(
                "aborting: nothing more is settled; events still held return to other "
                "consumers when their leases expire"
            )
            broker.abort()
            _exit_after(_ABORT_DEADLINE, 128 + signum)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        async with broker:
            # A signal while connecting found no run() to stop.
            if not signals:
                console.print(f"running group {broker.group!r} on {redact(broker.options.url)}")
                await broker.run()

    _run(serve)
    if len(signals) > 1:
        console.print("aborted")
        raise typer.Exit(128 + signals[1])
    console.print("stopped")


@contextlib.contextmanager
def _prometheus(host: str, port: int | None, refresh: float) -> Iterator[PrometheusMetrics | None]:
    """With a port, the metrics of this process's brokers, served at ``host:port``."""
    if port is None:
        yield None
        return
    try:
        from broker_prometheus import PrometheusMetrics, serving
    except ModuleNotFoundError as exc:
        if exc.name != "prometheus_client":
            raise
        # (\\[ keeps rich from reading the name of the extra as markup.)
        console.print(
            "[red]error:[/red] --metrics-port needs prometheus_client, which is not "
            "installed: pip install 'embedded-event-broker\\[prometheus]'",
            soft_wrap=True,
        )
        raise typer.Exit(2) from exc
    metrics = PrometheusMetrics(refresh_interval=refresh)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(serving(metrics.registry, host, port))
        except OSError as exc:
            console.print(f"[red]error:[/red] cannot serve metrics on {address}: {exc}")
            raise typer.Exit(2) from exc
        # Process-wide, and before the service's module is imported: a broker looks its
        # plugins up once, when it is built, and the module builds it.
        manager = plugin_manager()
        manager.register(metrics)
        stack.callback(manager.unregister, metrics)
        console.print(f"serving metrics at http://{address}/metrics")
        yield metrics


def _exit_after(seconds: float, status: int) -> None:
    """End the process with ``status`` in ``seconds``, whatever it is doing by then."""

    def exit_now() -> None:
        console.print(
            f"not ended {seconds:g} s after the abort: exiting without waiting for the "
            "handlers still running"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        # Not sys.exit, which from this thread would end only the thread; and a normal
        # exit would wait for the stuck worker thread forever.
        os._exit(status)

    # A thread, not the event loop: the wait may outlast the loop, e.g. in the
    # interpreter joining a handler's worker thread at exit.
    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()


def _load_broker(target: str) -> Broker:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter("expected 'package.module:name'", param_hint="MODULE:NAME")
    # Like `python -m`, let modules of the current directory be found.
    sys.path.insert(0, "")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot load {target}: {exc}", param_hint="MODULE:NAME") from exc
    broker = found() if callable(found) and not isinstance(found, Broker) else found
    if not isinstance(broker, Broker):
        raise typer.BadParameter(f"{target} is not a Broker", param_hint="MODULE:NAME")
    return broker


@app.command()
def plugins() -> None:
    """List the installed transports and the URL schemes they serve."""
    table = Table(title="installed transports")
    table.add_column("name")
    table.add_column("schemes")
    table.add_column("description")
    for info in installed_transports():
        table.add_row(info.name, ", ".join(f"{s}://" for s in info.schemes), info.description)
    console.print(table)


def _shared_store(url: str | None, command: str) -> str:
    """``url``, or an error exit if it names no store that ``broker command`` could inspect."""
    # An in-memory store lives inside the process that created it. An operator command
    # runs in a process of its own, so it would see a fresh, empty store and report
    # nothing at all, which reads as "all is well".
    in_memory = "an in-memory store is visible only inside the process that holds it"
    if url is None:
        problem = f"no store given (memory:// is no default here: {in_memory})"
    elif urlsplit(url).scheme == "memory":
        problem = (
            f"{redact(url)} is an in-memory store, visible only inside the process that "
            f"holds it: `broker {command}` runs in a process of its own and would always "
            "find it empty"
        )
    else:
        return url
    console.print(
        f"[red]error:[/red] {problem}. Pass --url or set BROKER_URL to the store your "
        "services share, e.g. redis://host:6379/0",
        soft_wrap=True,
    )
    raise typer.Exit(2)


@app.command()
def stats(
    url: StoreUrl = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
) -> None:
    """Ready, leased, delayed and dead events, and the lag, per topic and group."""
    store = _shared_store(url, "stats")

    async def collect() -> None:
        async with Broker.from_url(store) as broker:
            rows = await broker.stats(topic)
        table = Table(title=f"queues on {redact(store)}")
        for column in ("topic", "group", "ready", "leased", "delayed", "dead", "lag"):
            table.add_column(column, justify="left" if column in ("topic", "group") else "right")
        for row in rows:
            table.add_row(
                row.topic,
                row.group,
                str(row.ready),
                str(row.leased),
                str(row.delayed),
                str(row.dead),
                str(row.lag),
            )
        console.print(table)

    _run(collect)


@app.command()
def topics(url: StoreUrl = None) -> None:
    """Topics with their partitions, retention, the history they retain, and their groups."""
    store = _shared_store(url, "topics")

    async def collect() -> None:
        async with Broker.from_url(store) as broker:
            rows = [(s, await broker.transport.groups(s.topic)) for s in await broker.topic_stats()]
        table = Table(title=f"topics on {redact(store)}")
        columns = ("topic", "partitions", "max age", "max events", "retained", "oldest", "groups")
        for column in columns:
            numeric = column in ("partitions", "retained")
            table.add_column(column, justify="right" if numeric else "left")
        now = datetime.now(UTC)
        for row, groups in rows:
            oldest = (
                "" if row.oldest_age is None else _when(now - timedelta(seconds=row.oldest_age))
            )
            table.add_row(
                row.topic,
                str(row.partitions),
                "" if row.max_age is None else str(timedelta(seconds=row.max_age)),
                "" if row.max_events is None else f"{row.max_events:,}",
                f"{row.retained:,}" if row.retains else "no retention",
                oldest,
                ", ".join(groups),
            )
        console.print(table)

    _run(collect)


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _start(value: str) -> Start:
    try:
        return parse_start(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def rewind(
    topic: TopicArg,
    group: GroupArg,
    to: Annotated[
        str, typer.Option("--to", help="'earliest', or an ISO time (UTC unless it says).")
    ],
    url: StoreUrl = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it; without, only say what it would do.")
    ] = False,
) -> None:
    """Deliver a topic's retained events from --to on to a group again (to rebuild a projection)."""
    store = _shared_store(url, "rewind")
    start = _start(to)
    since = _when(start) if isinstance(start, datetime) else "the earliest retained event"

    async def act() -> int:
        async with Broker.from_url(store, group=group) as broker:
            return await broker.rewind(topic, to=start, dry_run=not yes)

    try:
        count = _run(act)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if yes:
        console.print(f"rewound {topic}/{group}: {count} events from {since} delivered again")
    else:
        console.print(
            f"would deliver {count} events of {topic} from {since} to {group} again "
            "(events the group still holds are left out); nothing changed: pass --yes to rewind"
        )


@app.command()
def dead(
    topic: TopicArg,
    group: GroupArg,
    url: StoreUrl = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many of the oldest.")] = 0,
) -> None:
    """List dead events of a topic and group, oldest death first, with why they died."""
    store = _shared_store(url, "dead")

    async def collect() -> None:
        async with Broker.from_url(store, group=group) as broker:
            letters = await broker.dead_letters(topic, limit=limit, offset=offset)
        table = Table(title=f"dead letters of {topic}/{group}")
        for column in ("event id", "reason", "attempts", "last error"):
            table.add_column(column)
        for letter in letters:
            table.add_row(letter.event_id, letter.reason, str(letter.attempts), letter.error or "")
        console.print(table)

    _run(collect)


EventIds = Annotated[list[str] | None, typer.Option("--id", help="Only these events (repeatable).")]


def _on_dead(
    url: str | None, topic: str, group: str, event_ids: list[str] | None, command: str
) -> None:
    store = _shared_store(url, command)

    async def act() -> int:
        async with Broker.from_url(store, group=group) as broker:
            operation = broker.replay_dead if command == "replay" else broker.purge_dead
            return await operation(topic, event_ids)

    verb = "replayed" if command == "replay" else "purged"
    console.print(f"{verb} {_run(act)} dead events of {topic}/{group}")


@app.command()
def replay(
    topic: TopicArg, group: GroupArg, url: StoreUrl = None, event_id: EventIds = None
) -> None:
    """Give dead events another full set of attempts."""
    _on_dead(url, topic, group, event_id, "replay")


@app.command()
def purge(
    topic: TopicArg, group: GroupArg, url: StoreUrl = None, event_id: EventIds = None
) -> None:
    """Delete dead events for good."""
    _on_dead(url, topic, group, event_id, "purge")


@app.command()
def unsubscribe(
    topic: TopicArg,
    group: GroupArg,
    url: StoreUrl = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a group's subscription and every event it holds there, dead ones included.

    For a decommissioned service, or a tail killed before it could clean up. Other groups
    keep their events. A consumer of the group still running would subscribe it again.
    """
    store = _shared_store(url, "unsubscribe")
    if not yes:
        typer.confirm(
            f"Remove group {group!r} from topic {topic!r}, with every event it holds there?",
            abort=True,
        )

    async def act() -> bool:
        async with Broker.from_url(store, group=group) as broker:
            return await broker.unsubscribe(topic)

    if _run(act):
        console.print(f"unsubscribed {group} from {topic}")
    else:
        console.print(f"{group} was not subscribed to {topic}: nothing to do")


@app.command()
def tail(
    topic: TopicArg,
    url: StoreUrl = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            help="Show what this group receives: refused unless it is subscribed to the "
            "topic (its queue is never read or changed).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print the events published to a topic from now on, one line each, until Ctrl-C.

    The tail reads through a group of its own, which it removes when it stops, so it
    disturbs no group and leaves nothing behind (docs/operations.md, "broker tail").
    """
    store = _shared_store(url, "tail")
    own = tail_group()

    def out(line: str) -> None:
        # print, not rich: no markup in payloads is interpreted, and each line is flushed
        # at once for a pipe.
        print(line, flush=True)

    async def follow() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with Broker.from_url(store) as broker:
            if group is not None and group not in await broker.transport.groups(
                validate_topic(topic)
            ):
                console.print(f"[red]error:[/red] group {group!r} is not subscribed to {topic!r}")
                raise typer.Exit(2)
            # Every group of a topic receives every event published after it subscribed,
            # so the tail's own group sees what `group` receives from now on.
            shown = f" (what {group} receives)" if group is not None else ""
            console.print(
                f"tailing {topic}{shown} on {redact(store)} as group {own}; Ctrl-C stops",
                soft_wrap=True,
            )
            sys.stdout.flush()
            await run_tail(broker.transport, topic, own, out, stop)
        console.print(f"stopped; group {own} removed")

    _run(follow)


@app.command()
def dashboard(
    url: StoreUrl = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; keep the default unless behind a proxy.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    allow_writes: Annotated[
        bool,
        typer.Option("--allow-writes", help="Allow replaying and purging dead letters."),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="BROKER_DASHBOARD_TOKEN",
            help="The token writes need (default: a random one, printed at start).",
            show_default=False,
        ),
    ] = None,
    refresh: Annotated[
        float, typer.Option(min=0.1, help="Seconds between two readings of the counts.")
    ] = 1.0,
) -> None:
    """Serve a live web dashboard of the store: counts, rates, dead letters.

    Read-only unless started with --allow-writes; writes then need the token
    (docs/operations.md, "Dashboard").
    """
    store = _shared_store(url, "dashboard")
    try:
        from broker_dashboard import WritePolicy, serve
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in ("starlette", "jinja2", "uvicorn"):
            raise
        console.print(
            f"[red]error:[/red] the dashboard needs {missing}, which is not installed: "
            "pip install 'embedded-event-broker\\[dashboard]'",
            soft_wrap=True,
        )
        raise typer.Exit(2) from exc

    async def reachable() -> None:
        async with Broker.from_url(store):
            pass

    # A store that cannot be reached is an error now, not a failed start inside uvicorn.
    _run(reachable)
    if allow_writes and not token:
        token = secrets.token_urlsafe(18)
        console.print(f"write token (to confirm a replay or purge): {token}", soft_wrap=True)
    elif token and not allow_writes:
        console.print("read-only (no --allow-writes): the token is not used")
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"dashboard of {redact(store)} at http://{shown}:{port}/ "
        f"({'writes allowed with the token' if allow_writes else 'read-only'})",
        soft_wrap=True,
    )
    sys.stdout.flush()
    serve(store, host=host, port=port, policy=WritePolicy(allow_writes, token), refresh=refresh)


def main() -> None:
    """Entry point of the ``broker`` command."""
    app()
