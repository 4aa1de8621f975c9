"""The web dashboard: static HTML/JS/CSS served at `/`, talking to the same `/v1` API.

No build step and nothing fetched from a CDN (the machines it runs on may have no internet):
the browser gets `index.html`, which loads the scripts under `/dashboard/static/`. The page keeps
the API key in `localStorage` and sends it as a Bearer token, exactly like any other client, so
the server needs no sessions or cookies. None of these routes is part of the API schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tuna_core.evals import expected_answer_criteria
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

    @app.get("/dashboard/evals.js", include_in_schema=False)
    def dashboard_evals() -> Response:
        return Response(evals_script(), media_type="text/javascript", headers=_NO_CACHE)

    @app.get("/dashboard/evals/{eval_id}/runs/{run_id}", include_in_schema=False)
    def dashboard_eval_run(eval_id: str, run_id: str) -> RedirectResponse:
        # A run's `report_url`: the eval's page, with that run picked out.
        return RedirectResponse(f"/#/evals/{quote(eval_id, safe='')}?run={quote(run_id, safe='')}")

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


#: The placeholder `evals_script` puts where the expected-answer field goes.
EXPECT_FIELD_PLACEHOLDER = "__FIELD__"


def evals_script() -> str:
    """`window.TUNA_EVALS`: the testing criteria of the "New eval" form's expected-answer field
    (`{"expect_criteria": [...], "field_placeholder": "__FIELD__"}`), from
    `tuna_core.evals.expected_answer_criteria`: the criteria `tuna evals create --expect FIELD`
    and the job comparison grade with, so that the form grades alike."""
    served = {
        "expect_criteria": expected_answer_criteria(EXPECT_FIELD_PLACEHOLDER),
        "field_placeholder": EXPECT_FIELD_PLACEHOLDER,
    }
    return f"window.TUNA_EVALS = {json.dumps(served, sort_keys=True)};\n"
