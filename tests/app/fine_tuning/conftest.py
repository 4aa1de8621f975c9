"""Fixtures for the fine-tuning API tests: a recording job queue and a project we can name."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import openai
import pytest
from sqlalchemy import select

from app.db import Database
from app.fine_tuning.state import JobStatus, transition
from app.orm import FineTuningJob
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl


@dataclass
class RecordingQueue:
    """Stands in for Celery: records each enqueue with the job's status *as committed*.

    It reads through a separate session, which sees only committed rows: a job enqueued before
    its transaction committed would be recorded with status None.
    """

    db: Database
    enqueued: list[tuple[str, str | None]] = field(default_factory=list)

    def enqueue(self, job_id: str) -> None:
        with self.db.session_scope() as session:
            status = session.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))
        self.enqueued.append((job_id, status))


@pytest.fixture
def job_queue(server: LiveServer) -> Iterator[RecordingQueue]:
    """Replaces the server's Celery queue for one test, so no message is left in the broker
    for a later test's worker to pick up."""
    real = server.app.state.job_queue
    queue = RecordingQueue(server.app.state.db)
    server.app.state.job_queue = queue
    try:
        yield queue
    finally:
        server.app.state.job_queue = real
        # The jobs never reached a broker; cancel them so that a worker's start-up reconcile
        # (which enqueues every waiting job) does not train them for later tests.
        with server.app.state.db.session_scope() as session:
            for job_id, _ in queue.enqueued:
                transition(session, job_id, JobStatus.CANCELLED)


@dataclass
class Tenant:
    name: str
    key: str
    client: openai.OpenAI


@pytest.fixture
def tenant(server: LiveServer) -> Tenant:
    """A project whose name the test knows (it is the jobs' `organization_id`)."""
    name = f"org-{uuid.uuid4().hex[:10]}"
    key = server.new_key(name)
    return Tenant(name=name, key=key, client=server.client(key))


def upload(client: openai.OpenAI, content: bytes | None = None, purpose: str = "fine-tune") -> str:
    data = chat_jsonl(12) if content is None else content
    return client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]
