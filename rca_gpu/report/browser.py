"""Open a report in headless Chromium: for the tests, the README screenshot and the report benchmark.

Uses the system's Chromium (Debian's ``chromium`` package; ``make browser`` installs it) through Playwright's
Python package with ``executable_path``, never a browser downloaded by Playwright. Needs the ``test`` extra.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Chromium is looked for, after the RCA_GPU_CHROMIUM environment variable.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None when none is installed."""
    explicit = os.environ.get("RCA_GPU_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    return None


@dataclass
class PageLog:
    """What a page did while open: console errors, uncaught exceptions, requested URLs, requests the page's
    Content-Security-Policy blocked before they left the browser, dialogs."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    load_seconds: float = 0.0

    def outside_file_urls(self) -> list[str]:
        """URLs the page fetched that are not ``file://`` (``blob:`` URLs the page made itself, and requests its
        CSP blocked, never left the browser and are not listed)."""
        return [url for url in self.requests
                if not url.startswith(("file://", "blob:")) and url not in self.blocked]


@contextlib.contextmanager
def open_report(path: str | Path, *, width: int = 1280, height: int = 900,
                timeout_s: float = 120.0) -> Iterator[tuple[Any, PageLog]]:
    """Load ``path`` in headless Chromium and wait until its map is drawn; yields (page, log).

    Raises
    ------
    FileNotFoundError
        No Chromium is installed (see :func:`find_chromium`).
    """
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("No Chromium found: install Debian's 'chromium' package (make browser).")
    log = PageLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: log.console_errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: log.requests.append(r.url))
            page.on("requestfailed", lambda r: log.blocked.append(r.url) if r.failure == "csp" else None)

            def dialog(d) -> None:
                log.dialogs.append(d.message)
                d.dismiss()

            page.on("dialog", dialog)
            started = time.perf_counter()
            page.goto(Path(path).resolve().as_uri(), wait_until="load")
            page.wait_for_selector("#map[data-ready='1']", state="attached")
            log.load_seconds = time.perf_counter() - started
            yield page, log
        finally:
            browser.close()
