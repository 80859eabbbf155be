"""The dashboard over HTTP: live counts from one reader, bounded reads, and refused writes.

A real uvicorn serves it on loopback (tests/dashboard_support.py), over an in-memory store
the test shares in-process; the browser tests (test_dashboard_browser.py) run the
``broker dashboard`` command on Redis.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape

import pytest
from dashboard_support import HOSTILE, Client, DashOrder, Recording, kill_all, running
from typer.testing import CliRunner

from broker_core import Broker
from broker_core.cli import app as cli
from broker_core.errors import TransportError
from broker_core.transport import QueueStats
from broker_dashboard import DashboardConfig, WritePolicy, allowed_hosts, create_app
from broker_dashboard.deadletters import GROUPING_WINDOW
from broker_dashboard.sampler import Reading, Sampler, read_store
from broker_memory import MemoryTransport, forget_store, named_store

TOKEN = "s3cret-token"
GROUP_PAGE = "/topics/orders/groups/billing"


@dataclass
class Setup:
    """A store with orders/billing holding dead letters, and a dashboard serving it."""

    store: str
    recording: Recording
    client: Client

    def run(self, coro: object) -> object:
        return asyncio.run(coro)  # type: ignore[arg-type]

    async def _dead(self) -> int:
        async with Broker.from_url(f"memory://{self.store}") as broker:
            [stats] = await broker.stats("orders")
            return stats.dead

    @property
    def dead(self) -> int:
        return asyncio.run(self._dead())


async def _fill(store: str, dead: int, hostile: bool = False) -> None:
    async with Broker.from_url(f"memory://{store}", group="billing") as broker:
        await broker.subscribe("orders")
        events = [DashOrder(order_id=f"o-{i}") for i in range(dead)]
        if hostile:
            events.append(
                DashOrder(order_id="o-evil", note=HOSTILE, headers={"traceparent": HOSTILE})
            )
        await broker.publish_many(events)
        await kill_all(broker, "billing", ["ValueError: bad total", f"KeyError: {HOSTILE}"])


def _serve(store: str, policy: WritePolicy, refresh: float = 0.2) -> Iterator[Setup]:
    recording = Recording(MemoryTransport(store=named_store(store)))
    dashboard = create_app(
        Broker(recording),
        DashboardConfig(policy=policy, refresh=refresh),  # type: ignore[arg-type]
    )
    try:
        with running(dashboard) as base:
            yield Setup(store, recording, Client(base))
    finally:
        forget_store(store)


@pytest.fixture
def writable() -> Iterator[Setup]:
    store = f"dash-{uuid.uuid4().hex}"
    asyncio.run(_fill(store, 4, hostile=True))
    yield from _serve(store, WritePolicy(allow_writes=True, token=TOKEN))


@pytest.fixture
def read_only() -> Iterator[Setup]:
    store = f"dash-{uuid.uuid4().hex}"
    asyncio.run(_fill(store, 4))
    yield from _serve(store, WritePolicy(allow_writes=False, token=None))


def _ids(html: str) -> list[str]:
    return re.findall(r'data-event-id="([^"]+)"', html)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _confirm(setup: Setup, query: str) -> tuple[str, list[tuple[str, str]]]:
    """The confirmation page of ``query``: its CSRF value, and the selection's fields."""
    page = setup.client.get(f"{GROUP_PAGE}/confirm?{query}")
    assert page.status == 200, page.text
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text)
    selection = [(name, unescape(value)) for name, value in fields if name != "csrf"]
    return _csrf(page.text), selection


# -- reading ---------------------------------------------------------------------------


def test_overview_lists_every_queue_and_streams_new_counts(writable: Setup) -> None:
    page = writable.client.get("/")
    assert page.status == 200
    assert '<tr data-queue="orders/billing">' in page.text
    assert 'sse-connect="/events"' in page.text

    async def publish() -> None:
        async with Broker.from_url(f"memory://{writable.store}") as broker:
            await broker.publish(DashOrder(order_id="new"))

    first = writable.client.stream("/events", 1)[0]
    assert first.startswith("event: overview\n")
    assert '<td class="n ready">0</td>' in first
    asyncio.run(publish())
    blocks = writable.client.stream("/events", 8)
    assert any('<td class="n ready">1</td>' in b for b in blocks if "event: overview" in b)
    assert any(b.startswith("event: queue:orders/billing\n") for b in blocks)


def test_the_overview_shows_each_topics_retention_and_partitions() -> None:
    store = f"dash-{uuid.uuid4().hex}"

    async def fill() -> None:
        async with Broker.from_url(f"memory://{store}", group="billing") as broker:
            await broker.configure_topic("orders", max_age=7200, max_events=500, partitions=12)
            await broker.subscribe("orders", "payments")
            await broker.publish_many([DashOrder(order_id="1"), DashOrder(order_id="2")])

    asyncio.run(fill())
    for setup in _serve(store, WritePolicy(allow_writes=False, token=None)):
        page = setup.client.get("/").text
        rows = dict(re.findall(r'data-queue="([^"]+)">.*?class="retention">([^<]*)<', page, re.S))
        assert rows["orders/billing"].startswith("2 h, newest 500: 2 kept, oldest ")
        assert rows["payments/billing"] == "none"
        topics = dict(re.findall(r'data-queue="([^"]+)">\s*<td>(.*?)</td>', page, re.S))
        assert topics["orders/billing"].startswith("orders <span class=\"partitions\"")
        assert topics["orders/billing"].endswith(">×12</span>")
        assert topics["payments/billing"] == "payments"


def test_one_reading_per_interval_serves_every_browser(writable: Setup) -> None:
    def listen(results: list[list[str]]) -> None:
        results.append(writable.client.stream("/events", 10))

    async def three_browsers() -> list[list[str]]:
        results: list[list[str]] = []
        await asyncio.gather(*(asyncio.to_thread(listen, results) for _ in range(3)))
        return results

    before = writable.recording.topic_reads
    results = asyncio.run(three_browsers())
    readings = writable.recording.topic_reads - before
    samples = min(sum("event: overview" in b for b in blocks) for blocks in results)
    assert samples >= 4
    # Three browsers, each seeing one sample per reading: the store was read once each time,
    # not once per browser.
    assert readings <= samples + 2


def test_pages_and_the_grouping_read_a_bounded_number_of_dead_letters() -> None:
    store = f"dash-{uuid.uuid4().hex}"
    asyncio.run(_fill(store, 2 * GROUPING_WINDOW + 100))
    for setup in _serve(store, WritePolicy(allow_writes=True, token=TOKEN)):
        setup.recording.dead_reads.clear()
        page = setup.client.get(f"{GROUP_PAGE}?page=40")
        assert page.status == 200
        assert len(_ids(page.text)) == 50
        assert "page 41 of 42 (2001-2050 of 2100)" in page.text
        assert f"Grouped over the {GROUPING_WINDOW} oldest of 2100 dead letters" in page.text
        assert max(limit for limit, _ in setup.recording.dead_reads) <= GROUPING_WINDOW
        assert sum(limit for limit, _ in setup.recording.dead_reads) <= GROUPING_WINDOW + 50
        event_id = _ids(page.text)[10]
        setup.recording.dead_reads.clear()
        detail = setup.client.get(f"{GROUP_PAGE}/dead/{event_id}?at=2010")
        assert detail.status == 200 and event_id in detail.text
        assert setup.recording.dead_reads == [(101, 1960)]
        # Acting on an error's group acts on its letters in the window, and no others.
        csrf, fields = _confirm(
            setup, "action=purge&scope=match&reason=handler&error=ValueError:%20bad%20total"
        )
        done = setup.client.post(f"{GROUP_PAGE}/purge", [*fields, ("csrf", csrf), ("token", TOKEN)])
        assert done.status == 200, done.text
        assert f"Purged {GROUPING_WINDOW // 2} dead letters" in done.text
        assert setup.dead == 2100 - GROUPING_WINDOW // 2


def test_a_hostile_payload_is_shown_as_text(writable: Setup) -> None:
    ids = _ids(writable.client.get(GROUP_PAGE).text)
    details = [writable.client.get(f"{GROUP_PAGE}/dead/{i}?at={n}") for n, i in enumerate(ids)]
    [detail] = [d for d in details if "o-evil" in d.text]
    assert detail.status == 200
    assert "<script>window" not in detail.text and "<img src=x" not in detail.text
    # In the data and in the traceparent header, as text.
    assert detail.text.count("&lt;script&gt;window.__pwned = 1&lt;/script&gt;") == 2
    policy = detail.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'") and "script-src 'self';" in policy
    for path in ("/", GROUP_PAGE):
        assert "<script>window" not in writable.client.get(path).text


def test_a_foreign_host_name_is_refused(writable: Setup) -> None:
    assert writable.client.get("/", headers={"Host": "attacker.example"}).status == 400
    assert allowed_hosts("127.0.0.1") == ("127.0.0.1", "localhost", "[::1]")
    assert allowed_hosts("10.0.0.5")[-1] == "10.0.0.5"
    assert allowed_hosts("0.0.0.0") == ("*",)


# -- writing ---------------------------------------------------------------------------


def test_a_read_only_dashboard_changes_nothing(read_only: Setup) -> None:
    page = read_only.client.get(GROUP_PAGE)
    assert "Read-only" in page.text and 'type="checkbox"' not in page.text
    confirm = read_only.client.get(f"{GROUP_PAGE}/confirm?action=replay&scope=all")
    assert "Read-only" in confirm.text and "<form" not in confirm.text
    csrf = read_only.client.cookies["broker_dashboard_csrf"]
    for action in ("replay", "purge"):
        reply = read_only.client.post(
            f"{GROUP_PAGE}/{action}", [("scope", "all"), ("csrf", csrf), ("token", "anything")]
        )
        assert reply.status == 403, reply.text
        assert "read-only" in reply.text and "nothing was changed" in reply.text
    assert read_only.dead == 4


def test_writes_need_the_token_and_the_csrf_value(writable: Setup) -> None:
    client = writable.client
    csrf, fields = _confirm(writable, "action=replay&scope=all")
    good = [*fields, ("csrf", csrf), ("token", TOKEN)]
    refused = {
        "no token": [*fields, ("csrf", csrf)],
        "wrong token": [*fields, ("csrf", csrf), ("token", TOKEN + "x")],
        "no csrf": [*fields, ("token", TOKEN)],
        "forged csrf": [*fields, ("csrf", "x" * 43), ("token", TOKEN)],
    }
    for why, form in refused.items():
        reply = client.post(f"{GROUP_PAGE}/replay", form)
        assert reply.status == 403, why
        assert "location" not in reply.headers, why
    # Another site's form: the browser names its origin, or sends no cookie.
    other = client.post(f"{GROUP_PAGE}/replay", good, headers={"Origin": "http://evil.example"})
    assert other.status == 403 and "another site" in other.text
    cookieless = Client(f"http://{client.host}:{client.port}")
    assert cookieless.post(f"{GROUP_PAGE}/replay", good).status == 403
    assert client.get(f"{GROUP_PAGE}/replay").status == 405  # a write is never a GET
    assert writable.dead == 5
    done = client.post(
        f"{GROUP_PAGE}/replay", good, headers={"Origin": f"http://{client.host}:{client.port}"}
    )
    assert done.status == 200, done.text
    assert "Replayed 5 dead letters" in done.text
    assert writable.dead == 0


def test_a_selection_is_replayed_or_purged_alone(writable: Setup) -> None:
    ids = _ids(writable.client.get(GROUP_PAGE).text)
    chosen = ids[1:3]
    query = "action=purge&scope=ids&" + "&".join(f"id={i}" for i in chosen)
    csrf, fields = _confirm(writable, query)
    assert [v for n, v in fields if n == "id"] == chosen
    done = writable.client.post(f"{GROUP_PAGE}/purge", [*fields, ("csrf", csrf), ("token", TOKEN)])
    assert "Purged 2 dead letters" in done.text
    assert _ids(writable.client.get(GROUP_PAGE).text) == [i for i in ids if i not in chosen]
    nothing = writable.client.post(
        f"{GROUP_PAGE}/purge", [("scope", "ids"), ("csrf", csrf), ("token", TOKEN)]
    )
    assert nothing.status == 400 and writable.dead == 3


def test_an_oversized_form_is_refused(writable: Setup) -> None:
    csrf, fields = _confirm(writable, "action=purge&scope=all")
    padding = ("pad", "x" * 1_100_000)
    reply = writable.client.post(
        f"{GROUP_PAGE}/purge", [*fields, ("csrf", csrf), ("token", TOKEN), padding]
    )
    assert reply.status == 413 and writable.dead == 5


@pytest.mark.asyncio
async def test_a_failed_reading_keeps_the_last_counts_and_says_why() -> None:
    readings: list[Reading | Exception] = [
        ([QueueStats("orders", "billing", 5, 0, 0, 1)], {}),
        TransportError("connection refused"),
        ([QueueStats("orders", "billing", 1, 0, 0, 3)], {}),
    ]

    async def read() -> Reading:
        reading = readings.pop(0)
        if isinstance(reading, Exception):
            raise reading
        return reading

    sampler = Sampler(read, interval=0.1)
    async with sampler.subscribe() as queue:
        assert (await queue.get()).error == "no reading yet"
        first = await sampler.sample_once()
        assert first.row("orders", "billing") is not None and first.error is None
        failed = await sampler.sample_once()
        assert failed.error == "connection refused" and failed.rows == first.rows
        assert (await queue.get()) is failed  # a slow browser gets the newest only
        third = await sampler.sample_once()
    row = third.row("orders", "billing")
    assert row is not None and row.dead_rate is not None and row.lag_rate is not None
    assert row.dead_rate > 0 > row.lag_rate
    assert sampler.subscribers == 0


# -- the command -----------------------------------------------------------------------


def test_the_command_refuses_an_in_memory_store() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--url", "memory://"])
    assert result.exit_code == 2 and "in-memory store" in result.output


def test_the_command_says_when_the_store_cannot_be_reached() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2, result.output
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.output


def test_the_command_names_the_extra_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if Starlette were not installed: importing any of it raises ModuleNotFoundError.
    for name in [m for m in sys.modules if m.split(".")[0] == "starlette"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "starlette", None)
    for name in [m for m in sys.modules if m.startswith("broker_dashboard")]:
        monkeypatch.delitem(sys.modules, name)
    result = CliRunner().invoke(cli, ["dashboard", "--url", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 2, result.output
    assert "embedded-event-broker[dashboard]" in result.output


# -- history -----------------------------------------------------------------------------


def _with_history(store: str) -> None:
    async def fill() -> None:
        async with Broker.from_url(f"memory://{store}", group="billing") as broker:
            await broker.configure_topic("orders", max_events=100)
            await broker.subscribe("orders")
            await broker.publish_many([DashOrder(order_id=f"h-{i}") for i in range(3)])

    asyncio.run(fill())


def test_the_history_page_previews_a_rewind_and_does_it_with_the_token() -> None:
    store = f"dash-{uuid.uuid4().hex}"
    _with_history(store)
    for setup in _serve(store, WritePolicy(allow_writes=True, token=TOKEN)):
        page = setup.client.get("/history")
        assert page.status == 200, page.text
        assert re.search(
            r'data-topic="orders">.*?newest 100.*?class="num retained">3<', page.text, re.S
        )
        # Three events READY, so a rewind now would deliver nothing new.
        preview = setup.client.get(f"{GROUP_PAGE}/rewind?to=earliest")
        assert preview.status == 200 and 'id="preview">0<' in preview.text
        asyncio.run(_ack_all(store))
        preview = setup.client.get(f"{GROUP_PAGE}/rewind?to=earliest")
        assert 'id="preview">3<' in preview.text
        csrf = _csrf(preview.text)
        without_token = setup.client.post(
            f"{GROUP_PAGE}/rewind", [("csrf", csrf), ("to", "earliest")]
        )
        assert without_token.status == 403 and _ready(store) == 0
        bad = setup.client.post(
            f"{GROUP_PAGE}/rewind", [("csrf", csrf), ("token", TOKEN), ("to", "someday")]
        )
        assert bad.status == 400 and _ready(store) == 0
        done = setup.client.post(
            f"{GROUP_PAGE}/rewind", [("csrf", csrf), ("token", TOKEN), ("to", "earliest")]
        )
        assert done.status == 200, done.text
        assert "3 events delivered again" in done.text
        assert _ready(store) == 3


def test_a_read_only_dashboard_previews_but_cannot_rewind() -> None:
    store = f"dash-{uuid.uuid4().hex}"
    _with_history(store)
    asyncio.run(_ack_all(store))
    for setup in _serve(store, WritePolicy(allow_writes=False, token=None)):
        preview = setup.client.get(f"{GROUP_PAGE}/rewind?to=2000-01-01T00:00:00Z")
        assert 'id="preview">3<' in preview.text and "Read-only" in preview.text
        refused = setup.client.post(f"{GROUP_PAGE}/rewind", [("to", "earliest")])
        assert refused.status == 403 and "location" not in refused.headers
        assert _ready(store) == 0
        assert setup.client.get("/topics/orders/groups/nobody/rewind?to=earliest").status == 404


async def _ack_all(store: str) -> None:
    async with Broker.from_url(f"memory://{store}") as broker:
        ms = await broker.transport.claim(
            "billing", ["orders"], max_count=100, lease=30, max_attempts=5
        )
        await broker.transport.ack([m.receipt for m in ms])


def _ready(store: str) -> int:
    async def read() -> int:
        async with Broker.from_url(f"memory://{store}") as broker:
            return (await broker.transport.stats("orders", "billing")).ready

    return asyncio.run(read())


def test_the_dashboard_reads_a_redis_cluster(redis_cluster_url: str, key_prefix: str) -> None:
    url = f"{redis_cluster_url}?key_prefix={key_prefix}"
    topics = [f"orders-{i}" for i in range(6)]  # on more than one master

    async def fill() -> None:
        async with Broker.from_url(url, group="billing") as broker:
            await broker.configure_topic(topics[0], max_events=10)
            await broker.subscribe(*topics)
            for topic in topics:
                await broker.publish(DashOrder(order_id="1"), topic=topic)

    asyncio.run(fill())
    dashboard = create_app(
        Broker.from_url(url), DashboardConfig(policy=WritePolicy(allow_writes=False, token=None))
    )
    with running(dashboard) as base:
        client = Client(base)
        page = client.get("/")
        assert page.status == 200, page.text
        for topic in topics:
            assert f'data-queue="{topic}/billing"' in page.text
        assert (
            'id="preview">0<'
            in client.get(f"/topics/{topics[0]}/groups/billing/rewind?to=earliest").text
        )


async def test_rates_come_from_the_stores_counters() -> None:
    transport = MemoryTransport()
    await transport.subscribe("orders", "billing")
    sampler = Sampler(lambda: read_store(transport), interval=0.1)
    await sampler.sample_once()
    await transport.publish("orders", [(f"r{i}", b"{}") for i in range(10)])
    claimed = await transport.claim("billing", ["orders"], max_count=4, lease=30, max_attempts=3)
    await transport.ack([m.receipt for m in claimed])
    await asyncio.sleep(0.05)
    row = (await sampler.sample_once()).row("orders", "billing")
    assert row is not None and row.published_rate and row.acked_rate
    # 10 published and 4 acked in the same time: rates in that proportion.
    assert row.published_rate / row.acked_rate == pytest.approx(10 / 4)
    assert row.lag_rate == pytest.approx(row.published_rate - row.acked_rate)
