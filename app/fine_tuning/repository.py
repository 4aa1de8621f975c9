"""Queries and inserts for jobs, events, checkpoints and fine-tuned models.

Shared by the API and the worker: every method takes plain values and works on any `Session`
(no request objects), flushes so that ids and `seq` exist at once, and never commits; the caller's
edge (request dependency or task wrapper) does. Status changes are not here: they go through
`app.fine_tuning.lifecycle`, with the event that tells of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, or_, select, update
from sqlalchemy.orm import Session

from app.fine_tuning.state import WAITING_VALUES, JobStatus
from app.ids import new_id
from app.orm import FineTunedModel, FineTuningCheckpoint, FineTuningEvent, FineTuningJob, Project
from app.orm.base import utcnow
from app.pagination import Page, paginate

JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt_"


class FineTuningRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Jobs ---------------------------------------------------------------------------------

    def add_job(self, job: FineTuningJob) -> FineTuningJob:
        self.session.add(job)
        self.session.flush()
        return job

    def get_job(self, job_id: str, *, project_id: str | None = None) -> FineTuningJob | None:
        """The job, or None; with `project_id`, another project's job is None too."""
        stmt = select(FineTuningJob).where(FineTuningJob.id == job_id)
        if project_id is not None:
            stmt = stmt.where(FineTuningJob.project_id == project_id)
        return self.session.scalar(stmt)

    def reload_job(self, job_id: str) -> FineTuningJob | None:
        """Re-read from the database: another transaction may have moved the job since."""
        return self.session.get(FineTuningJob, job_id, populate_existing=True)

    def ownership(self, job_id: str) -> tuple[str, str | None, int] | None:
        """(status, worker_id, attempt): enough for an attempt to tell whether it still runs."""
        row = self.session.execute(
            select(FineTuningJob.status, FineTuningJob.worker_id, FineTuningJob.attempt).where(
                FineTuningJob.id == job_id
            )
        ).one_or_none()
        return None if row is None else (row[0], row[1], row[2])

    def project_of(self, job: FineTuningJob) -> Project:
        project = self.session.get(Project, job.project_id)
        assert project is not None  # the foreign key cascades
        return project

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

    def renew_lease(self, job_id: str, worker_id: str, until: datetime) -> None:
        """Only while this worker still runs the job: a lost attempt must not keep it alive."""
        self.session.execute(
            update(FineTuningJob)
            .where(
                FineTuningJob.id == job_id,
                FineTuningJob.worker_id == worker_id,
                FineTuningJob.status == JobStatus.RUNNING.value,
            )
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )

    # The broker outbox: `enqueued_at` says a message for the job is known to be sent.

    def waiting_jobs(self, *, unsent_before: datetime | None) -> list[str]:
        """Jobs that need a message: all of them, or (with `unsent_before`) those created before
        it with no message known to be sent."""
        query = select(FineTuningJob.id).where(FineTuningJob.status.in_(WAITING_VALUES))
        if unsent_before is not None:
            query = query.where(
                FineTuningJob.enqueued_at.is_(None), FineTuningJob.created_at < unsent_before
            )
        return list(self.session.scalars(query.order_by(FineTuningJob.created_at)))

    def mark_enqueued(self, job_id: str, at: datetime, *, only_if_unsent: bool = False) -> bool:
        """Record that the job's message is (being) sent at `at`; True when this call did.

        The API marks after its send; a reconciler marks first with `only_if_unsent`, which
        makes it true for exactly one of several reconcilers, and only that one sends.
        """
        query = update(FineTuningJob).where(
            FineTuningJob.id == job_id, FineTuningJob.status.in_(WAITING_VALUES)
        )
        if only_if_unsent:
            query = query.where(FineTuningJob.enqueued_at.is_(None))
        result = self.session.execute(
            query.values(enqueued_at=at).execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def unmark_enqueued(self, job_id: str, at: datetime) -> None:
        """Undo a reconciler's `mark_enqueued` when its send failed: the next pass tries again."""
        self.session.execute(
            update(FineTuningJob)
            .where(FineTuningJob.id == job_id, FineTuningJob.enqueued_at == at)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )

    def refresh_job(self, job: FineTuningJob) -> FineTuningJob:
        """Re-read the row (another transaction, e.g. the worker, may have moved it)."""
        self.session.refresh(job)
        return job

    def list_jobs(
        self,
        project_id: str,
        *,
        metadata: Mapping[str, str] | None = None,
        metadata_is_null: bool = False,
        after: FineTuningJob | None = None,
        limit: int = 20,
    ) -> Page[FineTuningJob]:
        """Newest first. `metadata` keeps jobs whose metadata has every given pair."""
        stmt = select(FineTuningJob).where(FineTuningJob.project_id == project_id)
        column = FineTuningJob.metadata_
        if metadata_is_null:
            # A JSON column may hold SQL NULL or the JSON literal null; both mean "none".
            stmt = stmt.where(or_(column.is_(None), cast(column, Text) == "null"))
        for key, value in (metadata or {}).items():
            stmt = stmt.where(column[key].as_string() == value)
        return paginate(
            self.session,
            stmt,
            created_at=FineTuningJob.created_at,
            id_column=FineTuningJob.id,
            after=after,
            limit=limit,
        )

    # Events -------------------------------------------------------------------------------

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> FineTuningEvent:
        """Append one event; flushed at once so `seq` follows the order of calls."""
        event = FineTuningEvent(
            id=new_id(EVENT_PREFIX),
            job_id=job_id,
            created_at=created_at or utcnow(),
            level=level,
            message=message,
            type=type,
            data=data,
        )
        self.session.add(event)
        self.session.flush()
        return event

    def add_metrics_event(
        self, job_id: str, message: str, metrics: dict[str, Any]
    ) -> FineTuningEvent:
        """A `type: "metrics"` event, as OpenAI sends one per logged step."""
        return self.add_event(job_id, message, type="metrics", data=metrics)

    def metrics_events(self, job_id: str) -> list[dict[str, Any]]:
        """The data of the job's metrics events, in order (one per logged step)."""
        rows = self.session.scalars(
            select(FineTuningEvent.data)
            .where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
            .order_by(FineTuningEvent.seq)
        )
        return [row for row in rows if row]

    def last_metrics_step(self, job_id: str) -> int:
        return max((int(m.get("step", 0)) for m in self.metrics_events(job_id)), default=0)

    def get_event(self, job_id: str, event_id: str) -> FineTuningEvent | None:
        return self.session.scalar(
            select(FineTuningEvent).where(
                FineTuningEvent.job_id == job_id, FineTuningEvent.id == event_id
            )
        )

    def list_events(
        self, job_id: str, *, after: FineTuningEvent | None = None, limit: int = 20
    ) -> Page[FineTuningEvent]:
        """Newest first by `seq` (timestamps can tie; `seq` cannot)."""
        stmt = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
        if after is not None:
            stmt = stmt.where(FineTuningEvent.seq < after.seq)
        stmt = stmt.order_by(FineTuningEvent.seq.desc()).limit(limit + 1)
        rows = list(self.session.scalars(stmt))
        return Page(items=rows[:limit], has_more=len(rows) > limit)

    # Checkpoints --------------------------------------------------------------------------

    def add_checkpoint(
        self,
        *,
        job_id: str,
        project_id: str,
        step_number: int,
        fine_tuned_model_checkpoint: str,
        metrics: dict[str, Any],
        storage_key: str,
    ) -> FineTuningCheckpoint:
        checkpoint = FineTuningCheckpoint(
            id=new_id(CHECKPOINT_PREFIX),
            job_id=job_id,
            project_id=project_id,
            step_number=step_number,
            fine_tuned_model_checkpoint=fine_tuned_model_checkpoint,
            metrics=metrics,
            storage_key=storage_key,
            created_at=utcnow(),
        )
        self.session.add(checkpoint)
        self.session.flush()
        return checkpoint

    def get_checkpoint(self, job_id: str, checkpoint_id: str) -> FineTuningCheckpoint | None:
        return self.session.scalar(
            select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.id == checkpoint_id
            )
        )

    def list_checkpoints(
        self, job_id: str, *, after: FineTuningCheckpoint | None = None, limit: int = 10
    ) -> Page[FineTuningCheckpoint]:
        """Newest (highest step) first."""
        return paginate(
            self.session,
            select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id),
            created_at=FineTuningCheckpoint.step_number,
            id_column=FineTuningCheckpoint.id,
            after=after,
            limit=limit,
        )

    def checkpoints_of(self, job_id: str) -> list[FineTuningCheckpoint]:
        """Every checkpoint the job still keeps, lowest step first."""
        return list(
            self.session.scalars(
                select(FineTuningCheckpoint)
                .where(FineTuningCheckpoint.job_id == job_id)
                .order_by(FineTuningCheckpoint.step_number)
            )
        )

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
        self._add_job_model(job, model_id, storage_key, training_type, base_model, step)

    def remove_checkpoint(self, job_id: str, step: int) -> None:
        """The job's checkpoint at ``step`` and its model row, if there is one."""
        for checkpoint in self.session.scalars(
            select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step_number == step
            )
        ).all():
            self.delete_checkpoint(checkpoint)

    def delete_checkpoint(self, checkpoint: FineTuningCheckpoint) -> None:
        """For pruning to the last N; its `ft:...:ckpt-step-N` model row goes with it."""
        model = self.session.get(FineTunedModel, checkpoint.fine_tuned_model_checkpoint)
        if model is not None:
            self.session.delete(model)
        self.session.delete(checkpoint)
        self.session.flush()

    # Fine-tuned models --------------------------------------------------------------------

    def publish_model(
        self, job: FineTuningJob, model_id: str, storage_key: str, training_type: str, base: str
    ) -> None:
        """The job's final model; a duplicate run of a finished job keeps the first row."""
        if self.session.get(FineTunedModel, model_id) is None:
            self._add_job_model(job, model_id, storage_key, training_type, base)

    def _add_job_model(
        self,
        job: FineTuningJob,
        model_id: str,
        storage_key: str,
        training_type: str,
        base_model: str,
        checkpoint_step: int | None = None,
    ) -> FineTunedModel:
        return self.add_model(
            model_id=model_id,
            project_id=job.project_id,
            job_id=job.id,
            base_model=base_model,
            training_type=training_type,
            storage_key=storage_key,
            checkpoint_step=checkpoint_step,
        )

    def add_model(
        self,
        *,
        model_id: str,
        project_id: str,
        job_id: str,
        base_model: str,
        training_type: str,
        storage_key: str,
        checkpoint_step: int | None = None,
    ) -> FineTunedModel:
        """Register a callable `ft:` id (a final model, or a checkpoint when `checkpoint_step`)."""
        model = FineTunedModel(
            id=model_id,
            project_id=project_id,
            job_id=job_id,
            base_model=base_model,
            training_type=training_type,
            checkpoint_step=checkpoint_step,
            storage_key=storage_key,
            created_at=utcnow(),
        )
        self.session.add(model)
        self.session.flush()
        return model
