"""The ASGI application: routers, error handlers and the shared resources they use."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.auth import make_rate_limiter
from app.catalog.endpoints import router as catalog_router
from app.config import Settings, get_settings
from app.dashboard import install_dashboard
from app.db import Database
from app.errors import install_error_handlers
from app.evals.endpoints import router as evals_router
from app.exports.endpoints import router as exports_router
from app.files.endpoints import router as files_router
from app.files.storage import LocalStorage
from app.fine_tuning.endpoints import router as fine_tuning_router
from app.fine_tuning.queue import JobQueue
from app.inference.endpoints import models_router as inference_models_router
from app.inference.endpoints import router as inference_router
from app.inference.engine import create_engine as create_inference_engine
from app.webhooks.endpoints import router as webhooks_router
from app.webhooks.outbox import install_nudge


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    database = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.inference.close()
        database.dispose()

    app = FastAPI(
        title="Tuna",
        summary="Self-hosted fine-tuning with the OpenAI API",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = database
    app.state.storage = LocalStorage(settings.resolved_storage_dir)
    app.state.job_queue = _job_queue(settings)
    install_nudge(database, lambda: app.state.job_queue.nudge_webhooks())
    app.state.inference = create_inference_engine(settings, app.state.storage)
    app.state.rate_limiter = make_rate_limiter(settings)
    install_error_handlers(app)
    app.include_router(files_router)
    app.include_router(fine_tuning_router)
    app.include_router(evals_router)
    app.include_router(webhooks_router)
    app.include_router(exports_router)  # before catalog_router: /v1/models/{model:path}
    app.include_router(catalog_router)
    app.include_router(inference_router)
    app.include_router(inference_models_router)
    install_dashboard(app)  # `/` and /dashboard/static: web pages, not in the API schema

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    logging.getLogger("tuna").setLevel(logging.INFO)
    return app


def _job_queue(settings: Settings) -> JobQueue:
    # Imported here: Celery is only needed once an app is built, not by importers of this module.
    from worker.celery_app import CeleryJobQueue

    return CeleryJobQueue(settings)
