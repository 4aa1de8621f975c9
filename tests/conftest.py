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

import contextlib
import signal
import socket
import subprocess
import sys
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
from tests.openai_wire import WIRE, WireCheck

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TUNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TUNA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
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
    """Serve `app` on a free port; every response is checked against OpenAI's schemas."""
    port = free_port()
    config = uvicorn.Config(WireCheck(app), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    WIRE.reset()  # what the servers checked from here on belongs to this test
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail a test whose requests (its fixtures' included) got a response off OpenAI's schema."""
    result = yield
    violations = WIRE.take_violations()
    if violations:
        shown = "\n".join(f"  {v}" for v in violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        pytest.fail(f"responses that do not match OpenAI's schemas:\n{shown}{more}", False)
    return result


@contextlib.contextmanager
def new_postgres_database() -> Iterator[str]:
    """A database of its own, dropped afterwards (skipped, or failed in CI, without Postgres)."""
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
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test session, dropped afterwards."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture
def private_postgres_url() -> Iterator[str]:
    """A database for one test: no session worker's reconciler ever looks into it."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The production broker; sessions are kept apart by their own queue names."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI but unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


# Sessions running side by side on one machine share Redis: each gets its own queue.
SESSION_QUEUE = f"training-test-{uuid.uuid4().hex[:8]}"


def make_settings(
    tmp: Path, database_url: str | None, broker_url: str | None = None, **overrides: object
) -> Settings:
    overrides.setdefault("training_queue", SESSION_QUEUE)
    return Settings(
        data_dir=tmp,
        database_url=database_url,
        broker_url=broker_url,
        model_cache_dir=REPO_ROOT / "var" / "model-cache",
        enable_test_models=True,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"tuna-{backend}")
    if backend == "postgres":
        settings = make_settings(
            data_dir, request.getfixturevalue("postgres_url"), request.getfixturevalue("redis_url")
        )
    else:
        settings = make_settings(data_dir, None)
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


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a separate process needs to act on the same data as `settings`."""
    env = dict(os.environ)
    env.update(
        TUNA_DATA_DIR=str(settings.data_dir),
        TUNA_DATABASE_URL=settings.resolved_database_url,
        TUNA_BROKER_URL=settings.resolved_broker_url,
        TUNA_MODEL_CACHE_DIR=str(settings.resolved_model_cache_dir),
        TUNA_ENABLE_TEST_MODELS="1" if settings.enable_test_models else "0",
        TUNA_TRAINING_QUEUE=settings.training_queue,
        TUNA_JOB_LEASE_SECONDS=str(settings.job_lease_seconds),
        TUNA_TRAINING_PROCESSES=str(settings.training_processes),
        TUNA_TRAINING_NODES=str(settings.training_nodes),
        TUNA_TRAINING_RENDEZVOUS=settings.training_rendezvous or "",
    )
    return env


class WorkerProcess:
    """A real `celery worker` process, as `tuna worker` runs it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from app.cli import _worker_command

        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            _worker_command(1, self.settings.training_queue),
            env=settings_env(self.settings),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while b"ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + self.log_path.read_text()[-4000:])
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group: the main process and its pool children."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class ApiProcess:
    """`tuna serve --no-worker` in a process of its own, so that it can be SIGKILLed."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.settings, self.log_path, self.env = settings, log_path, env
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(self.port)],
            env={**settings_env(self.settings), **self.env},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, (
                self.log_path.read_text()[-4000:]
            )
            time.sleep(0.2)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def worker(server: LiveServer, tmp_path_factory: pytest.TempPathFactory):
    """One worker per backend for the whole session (tests isolate by project)."""
    process = WorkerProcess(
        server.settings, tmp_path_factory.mktemp("worker-logs") / f"{server.backend}.log"
    )
    process.start()
    yield process
    process.stop()
