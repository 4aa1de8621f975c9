"""Per-project quotas and per-key rate limits, each on its own server built with the limit on."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.auth import RateLimiter, RedisRateLimiter
from app.bootstrap import create_key, prepare
from app.config import Settings
from app.main import create_app
from tests.conftest import make_settings, serve_in_thread
from tests.datasets import chat_jsonl

TINY = "tuna-tiny-test"
DATA = chat_jsonl(12)


class _NoQueue:
    def enqueue(self, job_id: str) -> None:
        pass


class Served:
    def __init__(self, tmp: Path, database_url: str | None = None, **overrides: object) -> None:
        self.settings = make_settings(tmp, database_url, **overrides)
        prepare(self.settings)
        self.app = create_app(self.settings)
        self.app.state.job_queue = _NoQueue()
        self.url, self.stop = serve_in_thread(self.app)

    def http(self, project: str) -> httpx.Client:
        key = create_key(self.settings, project)
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    def start(database_url: str | None = None, **overrides: object) -> Served:
        served = Served(tmp_path, database_url, **overrides)
        started.append(served)
        return served

    yield start  # type: ignore[misc]
    for served in started:
        served.stop()


def upload(http: httpx.Client, data: bytes = DATA) -> httpx.Response:
    return http.post(
        "/v1/files",
        files={"file": ("train.jsonl", io.BytesIO(data), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )


def create_job(http: httpx.Client, file_id: str) -> httpx.Response:
    return http.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id})


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "postgres":
        return str(request.getfixturevalue("private_postgres_url"))
    return None


def test_quotas_are_off_by_default() -> None:
    settings = Settings()
    assert settings.max_running_jobs_per_project is None
    assert settings.max_storage_bytes_per_project is None
    assert settings.requests_per_minute_per_key is None


def test_running_jobs_quota(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve(max_running_jobs_per_project=2)
    with served.http("quota-a") as a, served.http("quota-b") as b:
        file_id = upload(a).json()["id"]
        jobs = [create_job(a, file_id) for _ in range(2)]
        assert [job.status_code for job in jobs] == [200, 200]

        over = create_job(a, file_id)
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["type"] == "rate_limit_exceeded"
        assert len(a.get("/v1/fine_tuning/jobs").json()["data"]) == 2  # nothing was created

        # Another project has its own count.
        assert create_job(b, upload(b).json()["id"]).status_code == 200

        # A finished (here: cancelled) job frees its place.
        assert a.post(f"/v1/fine_tuning/jobs/{jobs[0].json()['id']}/cancel").status_code == 200
        assert create_job(a, file_id).status_code == 200
        assert create_job(a, file_id).status_code == 429


def test_storage_quota(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve(max_storage_bytes_per_project=len(DATA) * 2 + 10)
    tmp_dir = served.app.state.storage.tmp_dir
    with served.http("store-a") as a, served.http("store-b") as b:
        first = upload(a)
        second = upload(a)
        assert first.status_code == second.status_code == 200

        over = upload(a)
        assert over.status_code == 400, over.text
        assert over.json()["error"]["code"] == "storage_quota_exceeded"
        assert len(a.get("/v1/files").json()["data"]) == 2  # nothing stored ...
        assert list(tmp_dir.iterdir()) == []  # ... and the streamed temp file is gone
        stored = sorted(p for p in served.app.state.storage.root.rglob("*") if p.is_file())
        assert len(stored) == 2

        # A smaller file is not refused for quota; another project has its own quota.
        small = upload(a, DATA[:5])  # fits, so it is judged on content (not valid JSONL)
        assert small.json()["error"]["code"] == "invalid_file_format"
        assert upload(b).status_code == 200

        # Deleting frees the room.
        assert a.delete(f"/v1/files/{first.json()['id']}").status_code == 200
        assert upload(a).status_code == 200


def test_requests_per_minute_per_key(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve(requests_per_minute_per_key=3)
    assert isinstance(served.app.state.rate_limiter, RateLimiter)
    now = [600.0]  # a fake clock: the window never turns over in the middle of the test
    served.app.state.rate_limiter = RateLimiter(3, clock=lambda: now[0])
    with served.http("rpm-a") as a, served.http("rpm-b") as b:
        assert [a.get("/v1/files").status_code for _ in range(3)] == [200, 200, 200]
        limited = a.get("/v1/models")
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.headers["retry-after"] == "60"

        # Each key has its own budget.
        assert b.get("/v1/files").status_code == 200

        now[0] += 45
        assert a.get("/v1/files").headers["retry-after"] == "15"
        now[0] += 15  # a new minute
        assert a.get("/v1/files").status_code == 200


def test_rate_limit_is_off_by_default(serve) -> None:  # type: ignore[no-untyped-def]
    served = serve()
    assert served.app.state.rate_limiter is None
    with served.http("rpm-off") as a:
        assert all(a.get("/v1/files").status_code == 200 for _ in range(30))


def test_racing_creates_never_exceed_the_running_jobs_quota(serve, database_url) -> None:  # type: ignore[no-untyped-def]
    served = serve(database_url, max_running_jobs_per_project=3)
    with served.http("race-jobs") as a:
        file_id = upload(a).json()["id"]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda _: create_job(a, file_id), range(12)))
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200] * 3 + [429] * 9, [a.text for a in answers if a.status_code >= 500]
        assert len(a.get("/v1/fine_tuning/jobs").json()["data"]) == 3


def test_racing_uploads_never_exceed_the_storage_quota(serve, database_url) -> None:  # type: ignore[no-untyped-def]
    served = serve(database_url, max_storage_bytes_per_project=len(DATA) * 3)
    with served.http("race-files") as a:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: upload(a), range(10)))
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [200] * 3 + [400] * 7, [a.text for a in answers if a.status_code >= 500]
        assert len(a.get("/v1/files").json()["data"]) == 3
    assert list(served.app.state.storage.tmp_dir.iterdir()) == []


def test_the_rate_limit_is_shared_by_api_processes_through_redis(serve, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    # Two API servers, as two processes behind a load balancer would be; one key.
    first = serve(requests_per_minute_per_key=5, rate_limit_url=redis_url)
    second = serve(requests_per_minute_per_key=5, rate_limit_url=redis_url)
    assert isinstance(first.app.state.rate_limiter, RedisRateLimiter)
    now = time.time() // 60 * 60 + 10  # a fixed moment early in a minute
    for served in (first, second):
        served.app.state.rate_limiter = RedisRateLimiter(redis_url, 5, clock=lambda: now)
    key = create_key(first.settings, f"rpm-shared-{uuid.uuid4().hex[:8]}")
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=first.url, headers=headers) as a,
        httpx.Client(base_url=second.url, headers=headers) as b,
    ):
        codes = [client.get("/v1/files").status_code for client in (a, b, a, b, a)]
        assert codes == [200] * 5
        limited = b.get("/v1/files")
        assert limited.status_code == 429, limited.text
        assert limited.headers["retry-after"] == "50"
        assert a.get("/v1/files").status_code == 429


def test_the_broker_redis_is_the_default_rate_limit_store(serve, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(
        serve(requests_per_minute_per_key=5, broker_url=redis_url).app.state.rate_limiter,
        RedisRateLimiter,
    )
    assert isinstance(serve(requests_per_minute_per_key=5).app.state.rate_limiter, RateLimiter)
