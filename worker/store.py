"""The worker's view of the job tables: the shared repository plus what only a worker asks.

Each method runs inside the caller's session; the runner commits (its edge) after each small
unit of progress, so the API shows training live.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.fine_tuning.repository import FineTuningRepository
from app.fine_tuning.state import WAITING_VALUES, JobStatus
from app.orm import (
    File,
    FineTunedModel,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
    Project,
)


class JobStore(FineTuningRepository):
    def job(self, job_id: str) -> FineTuningJob | None:
        """Re-read from the database: the API may have moved the job since the last look."""
        return self.session.get(FineTuningJob, job_id, populate_existing=True)

    def ownership(self, job_id: str) -> tuple[str, str | None, int] | None:
        """(status, worker_id, attempt): enough for an attempt to tell whether it still runs."""
        row = self.session.execute(
            select(FineTuningJob.status, FineTuningJob.worker_id, FineTuningJob.attempt).where(
                FineTuningJob.id == job_id
            )
        ).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    def project(self, project_id: str) -> Project:
        project = self.session.get(Project, project_id)
        assert project is not None
        return project

    def file(self, project_id: str, file_id: str) -> File | None:
        return self.session.scalar(
            select(File).where(File.id == file_id, File.project_id == project_id)
        )

    def metrics_events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.session.scalars(
            select(FineTuningEvent.data)
            .where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
            .order_by(FineTuningEvent.seq)
        )
        return [row for row in rows if row]

    def last_metrics_step(self, job_id: str) -> int:
        return max((int(m.get("step", 0)) for m in self.metrics_events(job_id)), default=0)

    def record_checkpoint(
        self,
        job: FineTuningJob,
        *,
        step: int,
        model_id: str,
        storage_key: str,
        metrics: dict[str, Any],
        training_type: str,
        base_model: str,
    ) -> None:
        """A checkpoint and its callable `...:ckpt-step-N` model; replaces one of the same step
        (a run resumed after a crash saves that step again)."""
        self.remove_checkpoint(job.id, step)
        self.add_checkpoint(
            job_id=job.id,
            project_id=job.project_id,
            step_number=step,
            fine_tuned_model_checkpoint=model_id,
            metrics=metrics,
            storage_key=storage_key,
        )
        self.add_model(
            model_id=model_id,
            project_id=job.project_id,
            job_id=job.id,
            base_model=base_model,
            training_type=training_type,
            storage_key=storage_key,
            checkpoint_step=step,
        )

    def remove_checkpoint(self, job_id: str, step: int) -> None:
        for checkpoint in self.session.scalars(
            select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step_number == step
            )
        ).all():
            self.delete_checkpoint(checkpoint)

    def publish_model(
        self, job: FineTuningJob, model_id: str, storage_key: str, training_type: str, base: str
    ) -> None:
        if self.session.get(FineTunedModel, model_id) is not None:
            return  # a duplicate run of a finished job keeps the first row
        self.add_model(
            model_id=model_id,
            project_id=job.project_id,
            job_id=job.id,
            base_model=base,
            training_type=training_type,
            storage_key=storage_key,
        )

    def expired_leases(self, now: datetime) -> list[str]:
        """Running jobs whose worker stopped renewing the lease: it died."""
        return list(
            self.session.scalars(
                select(FineTuningJob.id).where(
                    FineTuningJob.status == JobStatus.RUNNING.value,
                    FineTuningJob.lease_expires_at < now,
                )
            )
        )

    def waiting_jobs(self, *, unsent_before: datetime | None) -> list[str]:
        """Jobs that need a message: all of them, or (with `unsent_before`) those created before
        it with no message known to be sent."""
        query = select(FineTuningJob.id).where(FineTuningJob.status.in_(WAITING_VALUES))
        if unsent_before is not None:
            query = query.where(
                FineTuningJob.enqueued_at.is_(None), FineTuningJob.created_at < unsent_before
            )
        return list(self.session.scalars(query.order_by(FineTuningJob.created_at)))
