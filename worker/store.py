"""The worker's reads and writes of job rows: events, checkpoints, models, results.

Only this module builds the worker's queries; each method runs inside the caller's session, and
the runner commits (its edge) after each small unit of progress.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.ids import new_id
from app.orm import (
    File,
    FineTunedModel,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
    Project,
)
from app.orm.base import utcnow


class JobStore:
    def __init__(self, session: Session) -> None:
        self.session = session

    def job(self, job_id: str) -> FineTuningJob | None:
        return self.session.get(FineTuningJob, job_id, populate_existing=True)

    def status(self, job_id: str) -> str | None:
        return self.session.scalar(select(FineTuningJob.status).where(FineTuningJob.id == job_id))

    def project(self, project_id: str) -> Project:
        project = self.session.get(Project, project_id)
        assert project is not None
        return project

    def file(self, project_id: str, file_id: str) -> File | None:
        return self.session.scalar(
            select(File).where(File.id == file_id, File.project_id == project_id)
        )

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        self.session.add(
            FineTuningEvent(
                id=new_id("ftevent-"),
                job_id=job_id,
                created_at=utcnow(),
                level=level,
                message=message,
                type=type,
                data=data,
            )
        )

    def metrics_events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.session.scalars(
            select(FineTuningEvent.data)
            .where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
            .order_by(FineTuningEvent.seq)
        )
        return [row for row in rows if row]

    def last_metrics_step(self, job_id: str) -> int:
        steps = [int(m.get("step", 0)) for m in self.metrics_events(job_id)]
        return max(steps, default=0)

    def add_checkpoint(
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
        now = utcnow()
        self.session.add(
            FineTuningCheckpoint(
                id=new_id("ftckpt_"),
                job_id=job.id,
                project_id=job.project_id,
                step_number=step,
                fine_tuned_model_checkpoint=model_id,
                metrics=metrics,
                storage_key=storage_key,
                created_at=now,
            )
        )
        self.add_model(job, model_id, storage_key, training_type, base_model, step, now)

    def remove_checkpoint(self, job_id: str, step: int) -> None:
        model_ids = list(
            self.session.scalars(
                select(FineTuningCheckpoint.fine_tuned_model_checkpoint).where(
                    FineTuningCheckpoint.job_id == job_id,
                    FineTuningCheckpoint.step_number == step,
                )
            )
        )
        self.session.execute(
            delete(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step_number == step
            )
        )
        if model_ids:
            self.session.execute(delete(FineTunedModel).where(FineTunedModel.id.in_(model_ids)))

    def add_model(
        self,
        job: FineTuningJob,
        model_id: str,
        storage_key: str,
        training_type: str,
        base_model: str,
        checkpoint_step: int | None = None,
        created_at: datetime | None = None,
    ) -> None:
        if self.session.get(FineTunedModel, model_id) is not None:
            return  # a re-run of the same step (resume after a crash) keeps the first row
        self.session.add(
            FineTunedModel(
                id=model_id,
                project_id=job.project_id,
                job_id=job.id,
                base_model=base_model,
                training_type=training_type,
                checkpoint_step=checkpoint_step,
                storage_key=storage_key,
                created_at=created_at or utcnow(),
            )
        )

    def add_result_file(self, job: FineTuningJob, file: File) -> None:
        self.session.add(file)

    def lost_jobs(self, now: datetime, *, include_waiting: bool) -> list[str]:
        """Jobs a worker should be handling but none is: expired lease, or waiting in the queue."""
        running = select(FineTuningJob.id).where(
            FineTuningJob.status == "running", FineTuningJob.lease_expires_at < now
        )
        waiting = select(FineTuningJob.id).where(
            FineTuningJob.status.in_(["validating_files", "queued"])
        )
        lost = list(self.session.scalars(running))
        return lost + list(self.session.scalars(waiting)) if include_waiting else lost
