"""pytest plugin: `chromium`, a headless Debian Chromium driven by Playwright, and `browser_page`.

    async def test_x(browser_page: Page): await browser_page.goto(url); ...

The browser is the system's (`/usr/bin/chromium` from Debian, installed by `scripts/bootstrap.sh`;
`CLARION_CHROMIUM` overrides the path): Playwright's own browser downloads are never used, and a
machine without Chromium fails the test with what to install rather than skipping it. Each test gets
a fresh context (no cookies or storage from another test); console errors and uncaught page errors
are collected on `page.errors` so a test can assert the page ran cleanly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM_ENV = "CLARION_CHROMIUM"


def chromium_path() -> Path:
    """The Chromium binary to drive; AssertionError naming the fix when there is none."""
    configured = os.environ.get(CHROMIUM_ENV)
    found = configured or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found and Path(found).exists(), (
        f"no Chromium at {configured or 'chromium on PATH'}: run scripts/bootstrap.sh "
        f"(apt-get install chromium) or set {CHROMIUM_ENV}")
    return Path(found)


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium (as root it needs --no-sandbox, as in any container)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium_path()), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors(list[str]):
    """Console errors and uncaught exceptions of a page, in order."""


@pytest.fixture
async def browser_page(chromium: Browser) -> AsyncIterator[Page]:
    """A page in a fresh browser context; its errors collect on `page.errors` (a PageErrors)."""
    context = await chromium.new_context(locale="en-US")
    page = await context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        await context.close()
