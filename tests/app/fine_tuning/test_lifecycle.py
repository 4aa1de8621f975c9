"""Each status change writes its event with it, whoever makes it: API, runner or reconciler."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.db import Database
from app.errors import InvalidRequest
from app.fine_tuning.lifecycle import JobFailure, JobLifecycle
from app.fine_tuning.state import JobStatus
from app.orm import FineTuningEvent, FineTuningJob
from app.orm.base import utcnow
from tests.app.fine_tuning.test_state import database, new_job, project_id, snapshot

__all__ = ["database", "project_id"]  # fixtures, made this module's own

S = JobStatus


def events(db: Database, job_id: str) -> list[tuple[str, str]]:
    with db.session_scope() as session:
        rows = session.scalars(
            select(FineTuningEvent)
            .where(FineTuningEvent.job_id == job_id)
            .order_by(FineTuningEvent.seq)
        )
        return [(row.level, row.message) for row in rows]


def start(db: Database, job_id: str, *, from_checkpoint: bool = False) -> FineTuningJob | None:
    with db.session_scope() as session:
        return JobLifecycle(session).start(
            job_id, worker_id="w1", lease_until=utcnow() + timedelta(minutes=1),
            from_checkpoint=from_checkpoint,
        )  # fmt: skip


def api(db: Database, job_id: str, action: str) -> None:
    with db.session_scope() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        getattr(JobLifecycle(session), action)(job)


def test_a_job_paused_as_it_starts_and_resumed_says_started_once(
    database: Database, project_id: str
) -> None:
    job_id = new_job(database, project_id, S.QUEUED)
    assert start(database, job_id) is not None
    api(database, job_id, "pause")  # before the engine wrote any checkpoint
    api(database, job_id, "resume")
    second = start(database, job_id)
    assert second is not None and second.attempt == 2
    assert [message for _, message in events(database, job_id)] == [
        "Fine-tuning job started",
        "Fine-tuning job paused",
        "Fine-tuning job resumed",
        "Fine-tuning job started again from the beginning (attempt 2)",
    ]


def test_a_later_attempt_with_a_checkpoint_leaves_the_resume_to_the_engine(
    database: Database, project_id: str
) -> None:
    job_id = new_job(database, project_id, S.QUEUED)
    start(database, job_id)
    with database.session_scope() as session:
        assert JobLifecycle(session).requeue_lost(job_id)
    assert start(database, job_id, from_checkpoint=True) is not None
    assert events(database, job_id) == [
        ("info", "Fine-tuning job started"),
        ("warn", "Worker lost; job returned to the queue"),
    ]
    assert snapshot(database, job_id)["attempt"] == 2


def test_a_move_that_loses_writes_no_event(database: Database, project_id: str) -> None:
    job_id = new_job(database, project_id, S.CANCELLED)
    assert start(database, job_id) is None
    with database.session_scope() as session:
        lifecycle = JobLifecycle(session)
        assert not lifecycle.files_validated(job_id)
        assert not lifecycle.succeed(job_id, model_id="ft:x", trained_tokens=1, result_files=[])
        assert not lifecycle.fail(job_id, JobFailure("c", "m"), only_from={S.RUNNING})
        assert not lifecycle.requeue_lost(job_id)
    with pytest.raises(InvalidRequest, match=r"Cannot pause fine-tuning job .*'cancelled'"):
        api(database, job_id, "pause")
    assert events(database, job_id) == []


def test_success_and_failure_write_the_job_and_its_events(
    database: Database, project_id: str
) -> None:
    won = new_job(database, project_id, S.RUNNING)
    with database.session_scope() as session:
        assert JobLifecycle(session).succeed(
            won, model_id="ft:m", trained_tokens=7, result_files=["file-r"]
        )
    row = snapshot(database, won)
    assert (row["status"], row["fine_tuned_model"], row["trained_tokens"]) == (
        "succeeded",
        "ft:m",
        7,
    )
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    assert [m for _, m in events(database, won)] == [
        "New fine-tuned model created: ft:m",
        "The job has successfully completed",
    ]

    lost = new_job(database, project_id, S.VALIDATING_FILES)
    with database.session_scope() as session:
        failure = JobFailure("invalid_n_examples", "Too few.", "training_file")
        assert JobLifecycle(session).fail(lost, failure, only_from={S.VALIDATING_FILES})
    row = snapshot(database, lost)
    assert (row["status"], row["error_code"], row["error_param"]) == (
        "failed", "invalid_n_examples", "training_file",
    )  # fmt: skip
    assert events(database, lost) == [("error", "Too few.")]
