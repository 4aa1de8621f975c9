"""The ASGI application: routers, error handlers and the shared resources they use."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.config import Settings, get_settings
from app.db import Database
from app.errors import install_error_handlers
from app.files.endpoints import router as files_router
from app.files.storage import LocalStorage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    database = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
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
    install_error_handlers(app)
    app.include_router(files_router)

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    logging.getLogger("tuna").setLevel(logging.INFO)
    return app
