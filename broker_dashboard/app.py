"""The dashboard's Starlette application: pages, live updates, and its writes.

Pages are rendered on the server from Jinja2 templates (autoescaped: whatever a payload
holds is shown as text); htmx and its server-sent-events extension, vendored under
``static/``, swap in the live counts. The only writes are replaying and purging dead
letters and rewinding a group, each a POST from a confirmation page, checked by
:class:`~broker_dashboard.security.WritePolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker_core import cancel_and_wait
from broker_core.broker import Broker, Start, parse_start
from broker_core.codec import Envelope
from broker_core.errors import BrokerError, InvalidName
from broker_core.names import validate_group, validate_topic
from broker_core.urls import redact
from broker_dashboard import deadletters
from broker_dashboard.sampler import Sample, Sampler, read_store
from broker_dashboard.security import (
    CSRF_COOKIE,
    SECURITY_HEADERS,
    WritePolicy,
    new_csrf_value,
)

__all__ = ["DashboardConfig", "create_app"]

log = logging.getLogger("broker.dashboard")

_ACTIONS = {"replay": "replayed", "purge": "purged"}
_MAX_SELECTED = 1000
# Room for a selection of _MAX_SELECTED event ids many times over; a larger body is no form
# of these pages.
_MAX_FORM_BYTES = 1_000_000
_KEEPALIVE = 15.0


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """How a dashboard runs: what it may do, how often it reads, which hosts it answers."""

    policy: WritePolicy
    refresh: float = 1.0
    """Seconds between two readings of the counts (one reading serves every browser)."""
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "[::1]")
    """Host headers answered; others get 400 (a DNS-rebinding page cannot talk to it)."""


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("broker_dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["rate"] = _rate
    env.filters["duration"] = _duration
    env.filters["q"] = lambda text: quote(str(text), safe="")
    return env


def _when(seconds: float) -> str:
    # Redis reports its own TIME (Unix time); a memory store its monotonic clock.
    if seconds > 1e9:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
    return f"{seconds:.1f} s on the store's clock"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) < 0.05:
        return "0"
    return f"{value:+.1f}"


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class _Dashboard:
    """The request handlers, around one broker and one sampler."""

    def __init__(self, broker: Broker, config: DashboardConfig) -> None:
        self.broker = broker
        self.config = config
        self.policy = config.policy
        self.sampler = Sampler(lambda: read_store(broker.transport), config.refresh)
        self.env = _templates()
        # Set when the server stops: event streams end then, instead of holding it up.
        self.closing = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rendered: tuple[Sample, str] | None = None

    def close_streams(self) -> None:
        """End every event stream; safe to call from a signal handler or another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.closing.set)

    # -- rendering -------------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(
            allow_writes=self.policy.allow_writes,
            store=redact(self.broker.options.url),
            **context,
        )

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        """A full page; gives the browser its CSRF cookie if it has none."""
        cookie = request.cookies.get(CSRF_COOKIE)
        csrf = cookie or new_csrf_value()
        response = HTMLResponse(self.render(name, csrf=csrf, **context), status_code=status)
        if cookie is None:
            response.set_cookie(
                CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/", secure=False
            )
        return response

    def problem(self, request: Request, status: int, message: str) -> Response:
        return self.page(request, "problem.html", status=status, message=message)

    def sse(self, sample: Sample) -> str:
        """One sample as server-sent events: the overview table, then each queue's counts.

        Rendered once per sample, however many browsers it goes to.
        """
        if self._rendered is not None and self._rendered[0] is sample:
            return self._rendered[1]
        events = [("overview", self.render("_overview_table.html", sample=sample))]
        events += [
            (f"queue:{row.name}", self.render("_counts.html", row=row, sample=sample))
            for row in sample.rows
        ]
        text = "".join(_event(name, html) for name, html in events)
        self._rendered = (sample, text)
        return text

    # -- pages -----------------------------------------------------------------------

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", sample=self.sampler.latest)

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            async with self.sampler.subscribe() as queue:
                closing = asyncio.ensure_future(self.closing.wait())
                sample: asyncio.Task[Sample] | None = None
                try:
                    while not self.closing.is_set():
                        if sample is None:
                            sample = asyncio.ensure_future(queue.get())
                        done, _ = await asyncio.wait(
                            {sample, closing},
                            timeout=_KEEPALIVE,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if sample in done:
                            yield self.sse(sample.result())
                            sample = None
                        elif closing not in done:
                            yield ": keepalive\n\n"
                finally:
                    # Also when the browser went away and the stream was cancelled: a
                    # waiting get() left behind would be destroyed pending.
                    closing.cancel()
                    if sample is not None:
                        sample.cancel()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    async def group(self, request: Request) -> Response:
        names = _names(request)
        if names is None:
            return self.problem(request, 404, "no such topic or group name")
        topic, group = names
        if group not in await self.broker.transport.groups(topic):
            return self.problem(request, 404, f"{group} is not subscribed to {topic}")
        number = _int(request.query_params.get("page"), 0)
        stats = await self.broker.transport.stats(topic, group)
        letters = await deadletters.page(self.broker, topic, group, number)
        window = await deadletters.window(self.broker, topic, group)
        return self.page(
            request,
            "group.html",
            topic=topic,
            group=group,
            stats=stats,
            row=self.sampler.latest.row(topic, group),
            letters=letters,
            first=number * deadletters.PAGE_SIZE,
            number=number,
            pages=max(-(-stats.dead // deadletters.PAGE_SIZE), 1),
            groups=deadletters.group_by_error(window),
            window=len(window),
            window_limit=deadletters.GROUPING_WINDOW,
        )

    async def letter(self, request: Request) -> Response:
        names = _names(request)
        if names is None:
            return self.problem(request, 404, "no such topic or group name")
        topic, group = names
        event_id = request.path_params["event_id"]
        position = _int(request.query_params.get("at"), 0)
        letter = await deadletters.find_letter(self.broker, topic, group, event_id, position)
        if letter is None:
            return self.problem(
                request,
                404,
                f"{event_id} is not among the dead letters of {topic}/{group} near position "
                f"{position}: it may have been replayed or purged",
            )
        try:
            envelope: Envelope | None = Envelope.model_validate_json(letter.body)
        except ValidationError:
            envelope = None
        return self.page(
            request,
            "event.html",
            topic=topic,
            group=group,
            letter=letter,
            position=position,
            envelope=envelope,
            data=None
            if envelope is None
            else json.dumps(envelope.data, indent=2, ensure_ascii=False),
            raw=letter.body.decode("utf-8", "backslashreplace") if envelope is None else None,
        )

    async def confirm(self, request: Request) -> Response:
        names = _names(request)
        if names is None:
            return self.problem(request, 404, "no such topic or group name")
        topic, group = names
        params = request.query_params
        action = params.get("action", "")
        if action not in _ACTIONS:
            return self.problem(request, 400, "choose replay or purge")
        selection = _Selection.parse(
            params.get("scope", ""), params.getlist("id"), params.get("reason"), params.get("error")
        )
        if isinstance(selection, str):
            return self.problem(request, 400, selection)
        count = await self._count(topic, group, selection)
        return self.page(
            request,
            "confirm.html",
            topic=topic,
            group=group,
            action=action,
            selection=selection,
            count=count,
        )

    async def act(self, request: Request) -> Response:
        names = _names(request)
        action = request.path_params["action"]
        if names is None or action not in _ACTIONS:
            return self.problem(request, 404, "no such page")
        topic, group = names
        form = await _form(request)
        refused = self._refused(request, form)
        if refused is not None or form is None:
            return refused or self.problem(request, 413, "the form is too large")
        selection = _Selection.parse(
            _one(form, "scope"),
            form.get("id", []),
            form["reason"][0] if "reason" in form else None,
            form["error"][0] if "error" in form else None,
        )
        if isinstance(selection, str):
            return self.problem(request, 400, f"{selection}; nothing was changed")
        ids = await self._ids(topic, group, selection)
        operation = self.broker.replay_dead if action == "replay" else self.broker.purge_dead
        done = 0 if ids == [] else await operation(topic, ids, group=group)
        log.info("dashboard: %s %d dead letters of %s/%s", _ACTIONS[action], done, topic, group)
        return self.page(
            request,
            "done.html",
            topic=topic,
            group=group,
            verb=_ACTIONS[action],
            count=done,
        )

    def _refused(self, request: Request, form: dict[str, list[str]] | None) -> Response | None:
        """The answer to a write the policy refuses (4xx, nothing changed), or None."""
        if form is None:
            return self.problem(request, 413, "the form is too large; nothing was changed")
        origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
        refusal = self.policy.check(
            request.headers,
            request.cookies.get(CSRF_COOKIE),
            _one(form, "csrf"),
            _one(form, "token"),
            origin,
        )
        if refusal is not None:
            return self.problem(request, 403, f"refused: {refusal.reason}; nothing was changed")
        return None

    # -- history ---------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        """Every topic's retention and history, and a rewind form per group."""
        transport = self.broker.transport
        topics = [
            (await transport.topic_stats(topic), await transport.groups(topic))
            for topic in await transport.topics()
        ]
        return self.page(request, "history.html", topics=topics)

    async def rewind_preview(self, request: Request) -> Response:
        """What a rewind from ``?to=`` would deliver now (a dry run), and its confirmation."""
        target = await self._rewind_target(request, request.query_params.get("to", ""))
        if isinstance(target, Response):
            return target
        topic, group, to, start = target
        count = await self.broker.rewind(topic, to=start, group=group, dry_run=True)
        return self.page(
            request, "rewind.html", topic=topic, group=group, to=to, count=count, done=False
        )

    async def rewind(self, request: Request) -> Response:
        form = await _form(request)
        refused = self._refused(request, form)
        if refused is not None or form is None:
            return refused or self.problem(request, 413, "the form is too large")
        target = await self._rewind_target(request, _one(form, "to"))
        if isinstance(target, Response):
            return target
        topic, group, to, start = target
        count = await self.broker.rewind(topic, to=start, group=group)
        log.info("dashboard: rewound %s/%s from %s: %d events", topic, group, to, count)
        return self.page(
            request, "rewind.html", topic=topic, group=group, to=to, count=count, done=True
        )

    async def _rewind_target(
        self, request: Request, to: str
    ) -> tuple[str, str, str, Start] | Response:
        names = _names(request)
        if names is None:
            return self.problem(request, 404, "no such topic or group name")
        topic, group = names
        if group not in await self.broker.transport.groups(topic):
            return self.problem(request, 404, f"{group} is not subscribed to {topic}")
        try:
            start = parse_start(to)
        except ValueError as exc:
            return self.problem(request, 400, f"{exc}; nothing was changed")
        if start == "latest":
            return self.problem(request, 400, "rewind from 'earliest' or a time")
        return topic, group, to, start

    async def _ids(self, topic: str, group: str, selection: _Selection) -> list[str] | None:
        """The ids a selection names now (None: every dead letter of the group)."""
        if selection.scope == "all":
            return None
        if selection.scope == "ids":
            return list(selection.ids)
        return await deadletters.matching_ids(
            self.broker, topic, group, selection.reason or "", selection.error
        )

    async def _count(self, topic: str, group: str, selection: _Selection) -> int:
        if selection.scope == "all":
            return (await self.broker.transport.stats(topic, group)).dead
        ids = await self._ids(topic, group, selection)
        return len(ids or [])

    # -- lifetime --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        await self.broker.connect()
        # The first pages then show counts, not "no reading yet".
        await self.sampler.sample_once()
        task = asyncio.create_task(
            self.sampler.run(first_after=self.sampler.interval), name="dashboard-sampler"
        )
        try:
            yield
        finally:
            await cancel_and_wait(task)
            await self.broker.close()


@dataclass(frozen=True, slots=True)
class _Selection:
    """Which dead letters an action is for: ``all``, listed ``ids``, or a ``match``."""

    scope: str
    ids: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None

    @classmethod
    def parse(
        cls, scope: str, ids: Iterable[str], reason: str | None, error: str | None
    ) -> _Selection | str:
        """The selection a form or query names, or what is wrong with it.

        For ``match``, an ``error`` of None means letters without an error.
        """
        if scope == "all":
            return cls("all")
        if scope == "ids":
            chosen = tuple(dict.fromkeys(i for i in ids if i))
            if not chosen:
                return "no dead letter selected"
            if len(chosen) > _MAX_SELECTED:
                return f"at most {_MAX_SELECTED} dead letters at once"
            return cls("ids", chosen)
        if scope == "match" and reason is not None:
            return cls("match", reason=reason, error=error)
        return "say which dead letters: all, some ids, or a reason and error"

    def fields(self) -> list[tuple[str, str]]:
        """The selection as form fields, for the confirmation's form."""
        fields = [("scope", self.scope)] + [("id", i) for i in self.ids]
        if self.reason is not None:
            fields.append(("reason", self.reason))
        if self.error is not None:
            fields.append(("error", self.error))
        return fields


def _event(name: str, html: str) -> str:
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {name}\n{data}\n"


def _names(request: Request) -> tuple[str, str] | None:
    try:
        return (
            validate_topic(request.path_params["topic"]),
            validate_group(request.path_params["group"]),
        )
    except InvalidName:
        return None


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value), 0) if value is not None else default
    except ValueError:
        return default


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The URL-encoded form of a POST (the only kind the pages send); None if too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}


def _one(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name)
    return values[0] if values else ""


def create_app(broker: Broker, config: DashboardConfig) -> Starlette:
    """The dashboard of ``broker``'s store; the app connects and closes the broker."""
    dashboard = _Dashboard(broker, config)

    async def store_error(request: Request, exc: Exception) -> Response:
        return dashboard.problem(request, 503, f"the store cannot be read: {exc}")

    group = "/topics/{topic}/groups/{group}"
    app = Starlette(
        routes=[
            Route("/", dashboard.overview),
            Route("/events", dashboard.events),
            Route("/favicon.ico", dashboard.favicon),
            Route(group, dashboard.group),
            Route(f"{group}/confirm", dashboard.confirm),
            Route(f"{group}/dead/{{event_id:path}}", dashboard.letter),
            Route("/history", dashboard.history),
            Route(f"{group}/rewind", dashboard.rewind_preview, methods=["GET"]),
            Route(f"{group}/rewind", dashboard.rewind, methods=["POST"]),
            Route(f"{group}/{{action}}", dashboard.act, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("broker_dashboard", "static")])),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts)),
        ],
        exception_handlers={BrokerError: store_error},
        lifespan=dashboard.lifespan,
    )
    app.state.close_streams = dashboard.close_streams
    return app
