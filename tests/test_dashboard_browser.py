"""``broker dashboard`` on Redis, driven in a real headless Chromium by Playwright.

The system's Chromium (Debian's ``chromium``, which .ci/run installs) is used, never a
browser downloaded at run time. Without it the tests skip, except in CI, where they
must run. Each dashboard is a real ``broker dashboard`` process.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from checkout import checkout_env
from dashboard_support import HOSTILE, DashOrder, kill_all

from broker_core import Broker
from broker_core.codec import decode

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
T = TypeVar("T")
TOKEN = "browser-test-token"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

if not Path(CHROMIUM).exists() or shutil.which("redis-server") is None:
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} and redis-server are needed in CI", pytrace=False)
    pytest.skip(f"{CHROMIUM} or redis-server is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def _on_own_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to the end on a loop of its own thread (Playwright holds this one's)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def store(redis_url: str) -> str:
    url = f"{redis_url}?key_prefix=dashboard"

    async def fill() -> None:
        async with Broker.from_url(url, group="billing") as broker:
            await broker.configure_topic("orders", max_age=7 * 86400)
            await broker.subscribe("orders")
            await broker.transport.subscribe("orders", "shipping")
            await broker.publish_many(
                [
                    DashOrder(order_id="o-1", headers={"traceparent": TRACEPARENT}),
                    DashOrder(order_id="o-2"),
                    DashOrder(order_id="o-evil", note=HOSTILE),
                ]
            )
            await kill_all(broker, "billing", ["ValueError: bad total"])

    _on_own_loop(fill())
    return url


def _dashboard(url: str, *args: str) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker_core", "dashboard", "--port", str(port), *args],
        env=checkout_env(BROKER_URL=url, BROKER_DASHBOARD_TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the dashboard did not answer"
            try:
                with urllib.request.urlopen(base + "/static/dashboard.css", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output


@pytest.fixture
def writable(store: str) -> Iterator[str]:
    yield from _dashboard(store, "--allow-writes", "--refresh", "0.2")


@pytest.fixture
def read_only(store: str) -> Iterator[str]:
    yield from _dashboard(store, "--refresh", "0.2")


def _dead(url: str) -> list[str]:
    async def read() -> list[str]:
        async with Broker.from_url(url) as broker:
            letters = await broker.dead_letters("orders", group="billing")
            return [letter.note for letter in [_order(d.body) for d in letters]]

    return _on_own_loop(read())


def _order(body: bytes) -> DashOrder:
    event = decode(body)
    assert isinstance(event, DashOrder)
    return event


def _publish(url: str, order_id: str) -> None:
    async def publish() -> None:
        async with Broker.from_url(url) as broker:
            await broker.publish(DashOrder(order_id=order_id))

    _on_own_loop(publish())


def _new_page(browser: Browser) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1100, "height": 560})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, problems


def test_live_counts_and_a_replay_with_the_token(
    browser: Browser, writable: str, store: str, tmp_path: Path
) -> None:
    page, problems = _new_page(browser)
    page.goto(writable + "/")
    shipping = page.locator('tr[data-queue="orders/shipping"]')
    expect(shipping.locator("td.ready")).to_have_text("3")
    expect(page.locator('tr[data-queue="orders/billing"] td.dead')).to_have_text("3")
    _publish(store, "o-live")
    # Pushed by the server: the page is never reloaded.
    expect(shipping.locator("td.ready")).to_have_text("4", timeout=10_000)
    expect(shipping.locator("td.lag-rate")).not_to_have_text("-", timeout=10_000)
    expect(shipping.locator("td.retention")).to_contain_text("7 d: 4 kept")
    page.screenshot(path=str(tmp_path / "overview.png"))
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"])

    page.click("text=billing")
    expect(page.locator("#dead-letters tbody tr")).to_have_count(3)
    expect(page.locator("#error-groups")).to_contain_text("ValueError: bad total")
    first = page.locator("#dead-letters tbody tr").first
    event_id = first.get_attribute("data-event-id")
    first.locator("a").click()
    expect(page.locator("#headers tr.trace")).to_contain_text(TRACEPARENT)
    expect(page.locator("#death")).to_contain_text("ValueError: bad total")
    expect(page.locator("#body")).to_contain_text('"order_id": "o-1"')

    page.click("#replay")
    expect(page.locator("#question")).to_contain_text("Replay")
    page.fill("input[name=token]", TOKEN)
    with page.expect_response(re.compile(r"/replay$")) as answer:
        page.click("#confirm")
    assert answer.value.status == 200, answer.value.text()
    expect(page.locator("#outcome")).to_have_text("Replayed 1 dead letter of orders/billing.")
    page.click("#back")
    expect(page.locator("#dead-letters tbody tr")).to_have_count(2)
    assert page.locator(f'tr[data-event-id="{event_id}"]').count() == 0
    expect(page.locator("#counts dd.dead")).to_have_text("2")
    ready = int(page.locator("#counts dd.ready").inner_text())
    _publish(store, "o-more")
    # The group's counts are pushed too.
    expect(page.locator("#counts dd.ready")).to_have_text(str(ready + 1), timeout=10_000)
    assert sorted(_dead(store)) == ["", HOSTILE]
    assert problems == []


def test_a_wrong_token_changes_nothing(browser: Browser, writable: str, store: str) -> None:
    page, _ = _new_page(browser)
    page.goto(writable + "/topics/orders/groups/billing")
    page.click("#purge-all")
    page.fill("input[name=token]", "not-the-token")
    with page.expect_response(re.compile(r"/purge$")) as answer:
        page.click("#confirm")
    assert answer.value.status == 403
    assert answer.value.headers.get("location") is None
    expect(page.locator("#problem")).to_contain_text("wrong or missing token")
    assert len(_dead(store)) == 3


def test_without_allow_writes_nothing_can_be_changed(
    browser: Browser, read_only: str, store: str
) -> None:
    page, _ = _new_page(browser)
    page.goto(read_only + "/topics/orders/groups/billing")
    expect(page.locator("#dead-letters tbody tr")).to_have_count(3)
    assert page.locator("input[type=checkbox], #replay-all, #purge-all").count() == 0
    page.goto(read_only + "/topics/orders/groups/billing/confirm?action=purge&scope=all")
    expect(page.locator(".confirm")).to_contain_text("Read-only")
    assert page.locator("form").count() == 0
    # Even a form made by hand, with the page's own cookie and the right token.
    csrf = next(c["value"] for c in page.context.cookies() if c["name"].endswith("csrf"))
    answer = page.request.post(
        read_only + "/topics/orders/groups/billing/purge",
        form={"scope": "all", "csrf": csrf, "token": TOKEN},
        max_redirects=0,
    )
    assert answer.status == 403 and "read-only" in answer.text()
    assert len(_dead(store)) == 3


def test_a_hostile_payload_does_not_run(browser: Browser, writable: str) -> None:
    page, problems = _new_page(browser)
    page.goto(writable + "/topics/orders/groups/billing")
    for row in range(3):
        page.locator("#dead-letters tbody tr").nth(row).locator("a").click()
        if "o-evil" in page.locator("#body").inner_text():
            break
        page.go_back()
    expect(page.locator("#body")).to_contain_text("<script>window.__pwned = 1</script>")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#body script, #body img").count() == 0
    assert problems == []
