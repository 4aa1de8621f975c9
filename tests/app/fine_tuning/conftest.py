"""Fixtures for the fine-tuning API tests: a recording job queue, a project we can name, a
preference file, and a project's `ft:` model rows to continue from."""

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

    def enqueue_eval_run(self, run_id: str) -> None:
        self.enqueued.append((run_id, None))  # held like jobs: no worker runs it


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


def add_fine_tuned_model(
    server: LiveServer,
    project_name: str,
    *,
    base: str = "tuna-tiny-test",
    training_type: str = "lora",
    hyperparameters: dict[str, object] | None = None,
    checkpoint_step: int | None = None,
) -> str:
    """A succeeded job's model row (or a checkpoint's), as the worker records one; no files."""
    from app.auth import get_or_create_project
    from app.fine_tuning.repository import FineTuningRepository
    from tuna_core.model_ids import checkpoint_model_id, fine_tuned_model_id

    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    with server.app.state.db.session_scope() as session:
        project = get_or_create_project(session, project_name)
        jobs = FineTuningRepository(session)
        job = jobs.add_job(
            FineTuningJob(
                id=job_id,
                project_id=project.id,
                model=base,
                base_model=base,
                training_file="file-x",
                seed=0,
                hyperparameters={"training_type": training_type, **(hyperparameters or {})},
                status="succeeded",
                result_files=[],
            )
        )
        model_id = fine_tuned_model_id(base, project_name, "src", job_id)
        key = f"jobs/{job_id}/final"
        if checkpoint_step is not None:
            model_id = checkpoint_model_id(model_id, checkpoint_step)
            key = f"jobs/{job_id}/checkpoints/step-{checkpoint_step}"
        jobs.add_model(
            model_id=model_id,
            project_id=project.id,
            job_id=job.id,
            base_model=base,
            training_type=training_type,
            storage_key=key,
            checkpoint_step=checkpoint_step,
        )
    return model_id
