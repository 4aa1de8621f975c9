"""The web dashboard: static HTML/JS/CSS served at `/`, talking to the same `/v1` API.

No build step and nothing fetched from a CDN (the machines it runs on may have no internet):
the browser gets `index.html`, which loads the scripts under `/dashboard/static/`. The page keeps
the API key in `localStorage` and sends it as a Bearer token, exactly like any other client, so
the server needs no sessions or cookies. None of these routes is part of the API schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/dashboard/static"

# The page is small and changes with every release; always revalidate it.
_NO_CACHE = {"Cache-Control": "no-cache"}


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at `/` (and `/dashboard`), assets under `/dashboard/static/`."""

    @app.get("/", include_in_schema=False)
    def dashboard_index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
