"""A real headless Chromium (the system's package, driven by Playwright), and the screenshots the
docs show: a test saves them under `RAYFT_DOCS_SCREENSHOTS` (e.g. docs/img) when it is set."""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SCREENSHOTS_ENV = "RAYFT_DOCS_SCREENSHOTS"


@contextmanager
def chromium():
    """A headless Chromium page; `make test` installs the browser (`make browser`) when missing."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("no chromium on PATH: run `make browser` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 760})
        finally:
            browser.close()


def screenshot(page, name: str, fallback: Path) -> Path:
    """Save a screenshot as `name` in $RAYFT_DOCS_SCREENSHOTS, or in `fallback`."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)
    return folder / name


@contextmanager
def served(app, port: int):
    """`app` served by uvicorn on 127.0.0.1:`port` in a thread, until the block ends."""
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
