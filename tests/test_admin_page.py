"""The live sale page (``GET /admin``): public static files under a strict Content-Security-
Policy, out of the OpenAPI description; and, in a real browser (Debian's chromium driven by
Playwright), an operator signing in, watching a sale's numbers move while a crowd buys, and
pausing, resuming and closing it, with the service or Redis away in between.

Without chromium or Playwright the browser tests skip on a laptop and fail under CI
(.ci/run installs chromium)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from flashsale.http.admin_page import CONTENT_SECURITY_POLICY
from flashsale.http.app import create_app
from flashsale.settings import Settings
from tests.conftest import CI, ServiceFactory
from tests.helpers import FlashsaleTestServer, Service, services_started

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Dialog,
        Locator,
        Page,
        async_playwright,
        expect,
    )
except ImportError:  # skipped or failed below, by the browser fixture
    async_playwright = None

STATIC = Path(__file__).resolve().parent.parent / "flashsale" / "http" / "static"
# Debian's chromium (.ci/run installs it), not a browser Playwright downloads
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WAIT_MS = 8000  # the page polls every second: a few polls at most for anything to show


# --- the files ----------------------------------------------------------------------------------


PAGE_FILES = {
    "/admin": ("admin.html", "text/html"),
    "/admin/admin.js": ("admin.js", "text/javascript"),
    "/admin/admin.css": ("admin.css", "text/css"),
}


async def test_the_page_and_its_files_are_public(service: Service) -> None:
    for path, (name, content_type) in PAGE_FILES.items():
        async with service.client.get(path) as reply:  # no token: the files hold no data
            assert reply.status == 200, path
            assert reply.headers["Content-Type"] == f"{content_type}; charset=utf-8"
            assert reply.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert await reply.read() == (STATIC / name).read_bytes()
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'self';")
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_only_the_page_files_are_served_and_not_described(service: Service) -> None:
    for path in ("/admin/nothing.js", "/admin/..%2Fapp.py", "/admin/admin.html"):
        reply = await service.call("GET", path)
        assert reply.status == 404, path
        assert reply.body["error"] == "not_found"
    async with service.client.get("/admin/", allow_redirects=False) as reply:
        assert reply.status == 302
        assert reply.headers["Location"] == "../admin"
    # the admin API is in the OpenAPI description; its page is not
    reply = await service.call("GET", "/openapi.json")
    assert reply.status == 200
    assert "/v1/admin/sales" in reply.body["paths"]
    assert not [p for p in reply.body["paths"] if p == "/admin" or p.startswith("/admin/")]


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.sources: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.problems.append("a <style> element")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("a <script> without src")
        self.problems += [f"{tag} {name}=" for name in names if name == "style"]
        self.problems += [f"{tag} {name}= (a handler)" for name in names if name.startswith("on")]
        for name in ("src", "href"):
            if names.get(name):
                self.sources.append(str(names[name]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("an inline script")


def test_the_page_has_no_inline_script_or_style() -> None:
    markup = _Markup()
    markup.feed((STATIC / "admin.html").read_text())
    assert markup.problems == []
    # its own files, relative to /admin: nothing from another origin (no CDN)
    assert sorted(markup.sources) == ["admin/admin.css", "admin/admin.js"]


def test_the_parser_finds_inline_script() -> None:
    markup = _Markup()
    markup.feed('<script>alert(1)</script><p style="x" onclick="y"></p><script src="//cdn/x">')
    assert markup.problems == [
        "a <script> without src", "an inline script", "p style=", "p onclick= (a handler)",
    ]  # fmt: skip
    assert markup.sources == ["//cdn/x"]


# --- in a browser --------------------------------------------------------------------------------


# One browser for the module (starting Playwright's driver and chromium takes seconds): its
# tests, and the services they start, run in the module's event loop, which the browser is
# bound to.
in_the_browser_loop = pytest.mark.asyncio(loop_scope="module")
# ... and so on one pytest-xdist worker: the browser starts once
pytestmark = pytest.mark.xdist_group("admin_page_browser")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    if async_playwright is None or chromium is None:
        if chromium is None:
            what = "chromium is not installed (apt-get install -y chromium)"
        else:
            what = "Playwright is not installed (pip install playwright)"
        message = f"{what}: the live sale page is untested in a browser"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def services(settings: Settings) -> AsyncIterator[ServiceFactory]:
    """conftest's ``make_service``, in the browser's event loop."""
    async with services_started(settings) as make:
        yield make


class Watched:
    """A page of the browser, with what it said to its console and every URL it asked for."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.urls: list[str] = []
        self.failed_requests = 0
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"uncaught: {exc}"))
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("requestfailed", lambda r: self._failed())
        page.set_default_timeout(WAIT_MS)

    def _failed(self) -> None:
        self.failed_requests += 1

    def card(self, sale_id: str) -> Locator:
        return self.page.locator(f'article.sale[data-sale-id="{sale_id}"]')

    def number(self, sale_id: str, name: str) -> Locator:
        return self.card(sale_id).locator(f'[data-field="{name}"]')

    async def sign_in(self, token: str) -> None:
        await self.page.locator("#token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()

    def assert_clean(self) -> None:
        """No script error and nothing the Content-Security-Policy refused (which the browser
        reports as a console error); the failed requests the page made on purpose aside."""
        errors = [
            m for m in self.console
            if m.startswith(("error:", "uncaught:")) and "Failed to load resource" not in m
        ]  # fmt: skip
        assert errors == []


PageOpener = Callable[[Service], Awaitable[Watched]]


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser) -> AsyncIterator[PageOpener]:
    """Opens ``/admin`` of a service in a tab of its own (its own session storage)."""
    contexts: list[BrowserContext] = []

    async def open_(service: Service) -> Watched:
        context = await browser.new_context()
        contexts.append(context)
        watched = Watched(await context.new_page())
        await watched.page.goto(str(service.client.make_url("/admin")))
        return watched

    yield open_
    for context in contexts:
        await context.close()


async def click_and_answer(page: Page, button: Locator, *, accept: bool) -> str:
    """Click ``button``, answer the confirm dialog it opens, and return the dialog's text."""
    asked: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def answer(dialog: Dialog) -> None:
        asked.set_result(dialog.message)
        await (dialog.accept() if accept else dialog.dismiss())

    page.once("dialog", answer)
    await button.click()
    return await asyncio.wait_for(asked, 5)


@contextlib.asynccontextmanager
async def crowd(service: Service, sale_id: str, shoppers: int = 4) -> AsyncIterator[Counter[int]]:
    """Shoppers buying one unit each, over and over, until the block ends: their statuses."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def shopper(n: int) -> None:
        i = 0
        while not stop.is_set():
            statuses[(await service.buy(sale_id, f"shopper-{n}-{i}")).status] += 1
            i += 1
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(shopper(n)) for n in range(shoppers)]
    try:
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*tasks)


POSITIVE_RATE = re.compile(r"^(?!0\.0 )[\d,]+\.\d ")  # "12.0 (10 s: 9.5)", not "0.0 (...)"
A_DURATION = re.compile(r"^>? ?[\d,]+\.\d (ms|s)$")


@in_the_browser_loop
async def test_an_operator_watches_and_steers_a_sale(
    services: ServiceFactory, open_page: PageOpener
) -> None:
    service = await services()
    sale_id = (await service.create_sale(stock=100_000, rate_per_user=0))["sale_id"]
    watched = await open_page(service)
    page = watched.page
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.locator("#live")).to_be_hidden()

    # a wrong token is refused, said so, and not kept
    await watched.sign_in("not-the-admin-token")
    await expect(page.locator("#sign-in-message")).to_contain_text("refused this admin token (401")
    await expect(page.locator("#live")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0

    # the right one shows the sale
    token = service.settings.admin_token
    await watched.sign_in(token)
    await expect(watched.number(sale_id, "status")).to_have_text("open")
    await expect(page.locator("#connection")).to_contain_text("Updated")
    await expect(watched.number(sale_id, "stock")).to_have_text("100,000")
    # the token: in this tab's session storage, sent as a header, never a cookie or in a URL
    assert await page.evaluate("document.cookie") == ""
    assert await page.context.cookies() == []
    assert await page.evaluate("Object.keys(localStorage).length") == 0
    assert token in await page.evaluate("JSON.stringify(sessionStorage)")
    assert not [url for url in [*watched.urls, page.url] if token in url]

    # a crowd buys: the numbers move
    async with crowd(service, sale_id) as statuses:
        reserved = await watched.number(sale_id, "reserved").text_content()
        await expect(watched.number(sale_id, "reserved")).not_to_have_text(reserved or "")
        await expect(watched.number(sale_id, "sold-rate")).to_have_text(POSITIVE_RATE)
        service_panel = page.locator(".service")
        await expect(service_panel.locator('[data-field="buy-rate"]')).to_have_text(
            re.compile(r"^(?!0\.0/s)[\d,]+\.\d/s$")
        )
        for name in ("buy-p50", "buy-p99"):
            await expect(service_panel.locator(f'[data-field="{name}"]')).to_have_text(A_DURATION)
        await expect(service_panel.locator('[data-field="buy-errors"]')).to_have_text("0.0%")
        await expect(service_panel.locator('[data-field="buy-outcomes"]')).to_contain_text(
            "reserved"
        )
        await expect(service_panel.locator('[data-field="redis-up"]')).to_have_text("up")
        await expect(watched.number(sale_id, "writer-lag")).to_have_text(re.compile(r"\d (ms|s)$"))
        await expect(watched.number(sale_id, "writer-backlog")).to_have_text(re.compile(r"^\d"))

        # a pause not confirmed changes nothing
        pause = watched.card(sale_id).get_by_role("button", name="Pause")
        asked = await click_and_answer(page, pause, accept=False)
        assert sale_id in asked
        assert "409 sale_paused" in asked
        assert (await service.buy(sale_id, "after-a-dismissed-pause")).status == 201

        # confirmed, it stops the buys
        asked = await click_and_answer(page, pause, accept=True)
        assert sale_id in asked
        await expect(watched.number(sale_id, "status")).to_have_text("paused")
        await expect(page.locator("#flash")).to_contain_text(f"sale {sale_id}: Paused")
        await expect(watched.card(sale_id).get_by_role("button", name="Pause")).to_be_disabled()
    assert statuses[201] > 0
    assert set(statuses) <= {201, 409}
    refused = await service.buy(sale_id, "during-the-pause")
    assert (refused.status, refused.body["error"]) == (409, "sale_paused")

    # paused, the numbers hold still: the page shows the service's own
    stats = await service.stats(sale_id)
    for name in ("available", "reserved", "paid", "fcode_available"):
        await expect(watched.number(sale_id, name)).to_have_text(f"{stats[name]:,}")
    assert stats["reserved"] > 0

    # resumed, shoppers buy again
    resume = watched.card(sale_id).get_by_role("button", name="Resume")
    assert sale_id in await click_and_answer(page, resume, accept=True)
    await expect(watched.number(sale_id, "status")).to_have_text("open")
    assert (await service.buy(sale_id, "after-the-resume")).status == 201

    # closed: what becomes of the unpaid reservations is asked, then said
    close = watched.card(sale_id).get_by_role("button", name="Close")
    asked = await click_and_answer(page, close, accept=True)
    assert sale_id in asked
    assert "can still be paid or cancelled until they expire" in asked
    await expect(page.locator("#flash")).to_contain_text("can still be paid or cancelled")
    await expect(watched.card(sale_id)).to_have_count(0)
    ended = page.locator(f'#ended tr[data-sale-id="{sale_id}"]')
    await expect(ended).to_contain_text("closed")
    gone = await service.buy(sale_id, "after-the-close")
    assert (gone.status, gone.body["error"]) == (410, "sale_ended")

    # signed out, the token is gone from the tab
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    watched.assert_clean()


@in_the_browser_loop
async def test_the_page_says_when_redis_or_the_service_is_away(
    services: ServiceFactory, open_page: PageOpener
) -> None:
    service = await services()
    sale_id = (await service.create_sale())["sale_id"]
    # the same sales, through a service whose Redis does not answer (nothing listens on port 9)
    away = await services(redis_url="redis://127.0.0.1:9")
    port = away.client.port
    watched = await open_page(away)
    await watched.sign_in(away.settings.admin_token)
    connection = watched.page.locator("#connection")
    await expect(connection).to_contain_text("Redis or PostgreSQL is unavailable (503")
    await expect(connection).to_have_class(re.compile(r"\bbad\b"))

    # the service itself gone: said so, and asked again every second
    await away.close()
    await expect(connection).to_contain_text("Cannot reach the service")
    failed = watched.failed_requests
    for _ in range(WAIT_MS // 100):
        if watched.failed_requests >= failed + 3:
            break
        await asyncio.sleep(0.1)
    assert watched.failed_requests >= failed + 3

    # back on the same address, with its Redis: the page, never reloaded, shows the sale
    back = Service(
        TestClient(FlashsaleTestServer(create_app(service.settings), port=port)), service.settings
    )
    await back.client.start_server()
    try:
        await expect(watched.number(sale_id, "status")).to_have_text("open")
        await expect(connection).to_contain_text("Updated")
        await expect(connection).not_to_have_class(re.compile(r"\bbad\b"))
    finally:
        await back.close()
    watched.assert_clean()


@in_the_browser_loop
async def test_without_metrics_the_figures_are_dashes(
    services: ServiceFactory, open_page: PageOpener
) -> None:
    uncounted = await services(metrics=False)
    sale_id = (await uncounted.create_sale())["sale_id"]
    watched = await open_page(uncounted)
    await watched.sign_in(uncounted.settings.admin_token)
    await expect(watched.number(sale_id, "status")).to_have_text("open")
    note = watched.page.locator('[data-field="metrics-note"]')
    await expect(note).to_contain_text("keeps no metrics")
    for name in ("buy-p50", "buy-p99", "buy-rate", "redis-up"):
        assert await watched.page.locator(f'[data-field="{name}"]').text_content() == "—"
    assert await watched.number(sale_id, "writer-lag").text_content() == "—"
    await expect(watched.page.locator("#connection")).to_contain_text("Updated")
    watched.assert_clean()
