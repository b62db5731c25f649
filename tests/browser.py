"""Headless Chromium (Debian's ``chromium``) through Playwright, for the pages the tests open."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass
class Watched:
    """A page, the script errors it raised and every URL it requested."""

    page: object
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def chromium_page(*, args=CHROMIUM_ARGS, **page_options) -> Iterator[Watched]:
    """A fresh page of a headless Chromium that is closed afterwards, its errors and requests recorded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(args))
        try:
            page = browser.new_page(**page_options)
            watched = Watched(page)
            page.on("pageerror", lambda e: watched.errors.append(str(e)))
            page.on("request", lambda r: watched.requests.append(r.url))
            yield watched
        finally:
            browser.close()
