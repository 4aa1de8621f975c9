"""A real headless Chromium (Debian's `chromium` package) driven by Playwright's Python API.

Playwright's own browser download is not used (`playwright install` needs the internet):
the system Chromium is launched by path. Without it the browser tests skip locally and fail
in CI (`CI=true`), like the Postgres tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.evals.conftest import run_queue  # noqa: F401 (fixture: runs no worker executes)
from tests.conftest import IN_CI

CHROMIUM = os.environ.get("TUNA_TEST_CHROMIUM", "/usr/bin/chromium")
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
INSTALL_HINT = (
    "apt-get update && apt-get install -y chromium; .venv/bin/pip install playwright "
    "(do not run `playwright install`)"
)


def _unavailable(reason: str) -> None:
    message = f"{reason}; install with: {INSTALL_HINT}"
    if IN_CI:
        pytest.fail(f"the dashboard tests must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any, tmp_path: Path) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
