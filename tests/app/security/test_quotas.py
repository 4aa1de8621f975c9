"""Per-project quotas and per-key rate limits, each on its own server built with the limit on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import RateLimiter
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
    def __init__(self, tmp: Path, **overrides: object) -> None:
        self.settings = make_settings(tmp, None, **overrides)
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

    def start(**overrides: object) -> Served:
        served = Served(tmp_path, **overrides)
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
