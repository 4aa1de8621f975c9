"""Every status change of a job together with the event that tells of it, in one place.

The API service (cancel, pause, resume), the worker's runner (files validated, start, succeed,
fail) and the reconciler (a lost worker's job back to the queue) move jobs only through
`JobLifecycle`, so a move and its event are written in the same transaction, by the same code,
whoever makes it.  Each move is `state.transition`'s conditional UPDATE: of two racing movers
exactly one moves the job and writes the event; the other gets False (the worker) or a 400
naming the status it found (the API).  Nothing here commits: the caller's edge does.
A move that a webhook tells of (start, succeed, fail, cancel) emits it here, in the same
transaction (`app.webhooks.outbox`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.fine_tuning.repository import FineTuningRepository
from app.fine_tuning.state import JobStatus, sources_of, transition
from app.orm import FineTuningJob
from app.orm.base import utcnow
from app.webhooks import events as webhook_events
from app.webhooks.outbox import emit

S = JobStatus

# A status change the API asks for can lose a race to another writer and still be allowed from
# the new status (running -> paused while we cancel); a few tries settle it.
_TRANSITION_TRIES = 3


@dataclass(frozen=True)
class JobFailure:
    """What the job's `error` shows: OpenAI's `{code, message, param}`."""

    code: str
    message: str
    param: str | None = None


class JobLifecycle:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.jobs = FineTuningRepository(session)

    # -- the worker ------------------------------------------------------------------------

    def files_validated(self, job_id: str) -> bool:
        """validating_files -> queued, once the worker has checked the files."""
        if not transition(self.session, job_id, S.QUEUED, only_from={S.VALIDATING_FILES}):
            return False
        self.jobs.add_event(job_id, "Files validated, moving job to queued state")
        return True

    def start(
        self, job_id: str, *, worker_id: str, lease_until: datetime, from_checkpoint: bool
    ) -> FineTuningJob | None:
        """queued -> running for one attempt of one worker; the job, or None if not queued.

        The first attempt says the job started; a later one that finds no checkpoint says it
        starts over (one that resumes is reported by the engine, which knows the step).
        """
        moved = transition(
            self.session,
            job_id,
            S.RUNNING,
            only_from={S.QUEUED},
            attempt=FineTuningJob.attempt + 1,
            worker_id=worker_id,
            lease_expires_at=lease_until,
            started_at=func.coalesce(FineTuningJob.started_at, utcnow()),
        )
        if not moved:
            return None
        job = self.jobs.reload_job(job_id)
        assert job is not None
        if job.attempt == 1:
            self.jobs.add_event(job_id, "Fine-tuning job started")
            emit(self.session, job.project_id, webhook_events.JOB_RUNNING, job_id)
        elif not from_checkpoint:
            self.jobs.add_event(
                job_id, f"Fine-tuning job started again from the beginning (attempt {job.attempt})"
            )
        return job

    def succeed(
        self, job_id: str, *, model_id: str, trained_tokens: int, result_files: list[str]
    ) -> bool:
        """running -> succeeded; False when a cancel landed first (then nothing is published)."""
        moved = transition(
            self.session,
            job_id,
            S.SUCCEEDED,
            only_from={S.RUNNING},
            fine_tuned_model=model_id,
            trained_tokens=trained_tokens,
            result_files=result_files,
            finished_at=utcnow(),
            estimated_finish=None,
            lease_expires_at=None,
        )
        if moved:
            self.jobs.add_event(job_id, f"New fine-tuned model created: {model_id}")
            self.jobs.add_event(job_id, "The job has successfully completed")
            self._emit(job_id, webhook_events.JOB_SUCCEEDED)
        return moved

    def fail(self, job_id: str, failure: JobFailure, *, only_from: set[JobStatus]) -> bool:
        """-> failed with `failure` as the job's error, from the statuses the caller holds."""
        moved = transition(
            self.session,
            job_id,
            S.FAILED,
            only_from=only_from,
            error_code=failure.code,
            error_message=failure.message,
            error_param=failure.param,
            finished_at=utcnow(),
            estimated_finish=None,
            lease_expires_at=None,
        )
        if moved:
            self.jobs.add_event(job_id, failure.message, level="error")
            self._emit(job_id, webhook_events.JOB_FAILED)
        return moved

    # -- the reconciler --------------------------------------------------------------------

    def requeue_lost(self, job_id: str) -> bool:
        """running -> queued: its worker stopped renewing the lease (it died)."""
        if not transition(self.session, job_id, S.QUEUED, only_from={S.RUNNING}, enqueued_at=None):
            return False
        self.jobs.add_event(job_id, "Worker lost; job returned to the queue", level="warn")
        return True

    def requeue_after_lost_process(self, job_id: str, reason: str, max_attempts: int) -> bool:
        """running -> queued: one of the run's training processes died (its worker lives and
        says so); the next attempt resumes from the last checkpoint. Up to ``max_attempts``
        attempts: a process that keeps dying must end the job, not loop forever."""
        job = self.jobs.reload_job(job_id)
        if job is None or job.attempt >= max_attempts:
            return False
        if not transition(self.session, job_id, S.QUEUED, only_from={S.RUNNING}, enqueued_at=None):
            return False
        self.jobs.add_event(job_id, f"{reason} Job returned to the queue.", level="warn")
        return True

    # -- the API ---------------------------------------------------------------------------

    def cancel(self, job: FineTuningJob) -> None:
        self._move(job, S.CANCELLED, "cancel", finished_at=utcnow(), estimated_finish=None)
        self.jobs.add_event(job.id, "Fine-tuning job cancelled")
        emit(self.session, job.project_id, webhook_events.JOB_CANCELLED, job.id)

    def pause(self, job: FineTuningJob) -> None:
        self._move(job, S.PAUSED, "pause", only_from={S.QUEUED, S.RUNNING})
        self.jobs.add_event(job.id, "Fine-tuning job paused")

    def resume(self, job: FineTuningJob) -> None:
        """paused -> queued; the caller sends the job's message once this is committed."""
        self._move(job, S.QUEUED, "resume", only_from={S.PAUSED}, enqueued_at=None)
        self.jobs.add_event(job.id, "Fine-tuning job resumed")

    def _emit(self, job_id: str, event_type: str) -> None:
        job = self.jobs.reload_job(job_id)
        assert job is not None
        emit(self.session, job.project_id, event_type, job_id)

    def _move(
        self,
        job: FineTuningJob,
        target: JobStatus,
        action: str,
        *,
        only_from: set[JobStatus] | None = None,
        **values: Any,
    ) -> None:
        sources = sources_of(target)
        if only_from is not None:
            sources &= frozenset(only_from)
        for _ in range(_TRANSITION_TRIES):
            if transition(self.session, job.id, target, only_from=sources, **values):
                return
            self.jobs.refresh_job(job)
            if job.status not in sources:
                break
        # A 400 (e.g. cancelling a finished job), not a 409: the SDK retries a 409 as though the
        # conflict could clear by itself, and this one never does.
        raise InvalidRequest(
            f"Cannot {action} fine-tuning job {job.id}: its status is '{job.status}'.",
            param="id",
            code="invalid_job_status",
        )
