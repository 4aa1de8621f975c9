"""The web dashboard: static HTML/JS/CSS served at `/`, talking to the same `/v1` API.

No build step and nothing fetched from a CDN (the machines it runs on may have no internet):
the browser gets `index.html`, which loads the scripts under `/dashboard/static/`. The page keeps
the API key in `localStorage` and sends it as a Bearer token, exactly like any other client, so
the server needs no sessions or cookies. None of these routes is part of the API schema.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tuna_core.metrics import METHOD_METRICS, SPLITS, metric_names

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

    @app.get("/dashboard/metrics.js", include_in_schema=False)
    def dashboard_metrics() -> Response:
        return Response(metrics_script(), media_type="text/javascript", headers=_NO_CACHE)

    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")


def metrics_script() -> str:
    """`window.TUNA_METRICS`: per method, its metrics and their keys in a metrics event per split
    (`{"dpo": {"metrics": ["loss", ...], "train": ["train_loss", ...], ...}}`), from
    `tuna_core.metrics`: the one list the engine, the events and the CLI use too."""
    methods = {
        method: {"metrics": list(names), **{s: list(metric_names(method, s)) for s in SPLITS}}
        for method, names in METHOD_METRICS.items()
    }
    return f"window.TUNA_METRICS = {json.dumps(methods, sort_keys=True)};\n"
