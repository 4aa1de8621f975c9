"""Shared fixtures: a real server per database backend, and a fresh project per test.

Every test gets its own project and key, so tests are isolated by the same tenant boundary that
isolates users; the server (and its database) is started once per backend per session.
Postgres runs whenever it is reachable and must run in CI (`CI=true`): there a missing server
fails the run instead of skipping.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from app.bootstrap import create_key, prepare
from app.config import Settings
from app.main import create_app

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TUNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    app: FastAPI
    settings: Settings
    url: str
    backend: str

    def new_key(self, project: str | None = None) -> str:
        return create_key(self.settings, project or f"p-{uuid.uuid4().hex[:12]}")

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def serve_in_thread(app: FastAPI) -> tuple[str, Callable[[], None]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"tuna_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def make_settings(tmp: Path, database_url: str | None, **overrides: object) -> Settings:
    return Settings(
        data_dir=tmp,
        database_url=database_url,
        model_cache_dir=REPO_ROOT / "var" / "model-cache",
        enable_test_models=True,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"tuna-{backend}")
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    settings = make_settings(data_dir, database_url)
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    yield LiveServer(app=app, settings=settings, url=url, backend=backend)
    stop()


@pytest.fixture
def api_key(server: LiveServer) -> str:
    return server.new_key()


@pytest.fixture
def client(server: LiveServer, api_key: str) -> openai.OpenAI:
    return server.client(api_key)
