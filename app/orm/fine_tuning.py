from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, utcnow


class FineTuningJob(Base):
    """One fine-tuning job; `status` only ever changes through `fine_tuning.state.transition`."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_project_created", "project_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # As the caller named it: a base model (canonical name) or, for continued training, one of
    # the project's `ft:` models (a checkpoint's id included).
    model: Mapped[str] = mapped_column(String(400))
    # The base model the weights descend from: `model` itself, or the base of the `ft:` model
    # it continues. None where a row was written without it: then `model` is the base.
    base_model: Mapped[str | None] = mapped_column(String(256), default=None)
    # Continued training: the storage key of the folder holding the weights it starts from (the
    # source model's, copied at creation: the job does not follow a later change of that row).
    init_from: Mapped[str | None] = mapped_column(String(256), default=None)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), default=None)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    seed: Mapped[int] = mapped_column(BigInteger)
    method_type: Mapped[str] = mapped_column(String(16), default="supervised")
    # As requested ("auto" allowed), including the extensions (training_type, lora_*).
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Numbers chosen for "auto" values, once the worker has seen the data.
    resolved_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    status: Mapped[str] = mapped_column(String(20), index=True)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    error_param: Mapped[str | None] = mapped_column(String(64), default=None)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400), default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, default=None)
    integrations: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    estimated_finish: Mapped[datetime | None] = mapped_column(default=None)
    # Crash recovery: which attempt runs, who holds it, and until when its lease is good.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # When the broker last accepted a message for this job; None while the job needs one
    # (just created, resumed, or returned to the queue) and none is known to be sent. The
    # reconciler sends what is missing, so a crash between commit and send loses nothing.
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    resume_step: Mapped[int | None] = mapped_column(Integer, default=None)
    # The comparison run when the job succeeds (`app.evals.job_comparison`): `auto_eval` as
    # decided at creation ({"enabled", "max_items"}; None on rows older than it), the eval it
    # made (None until then, or when there was nothing to compare), and when its table was
    # written as an event (once, by whichever run ended last).
    auto_eval: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    eval_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    eval_reported_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def trained_base_model(self) -> str:
        """The base model whose architecture and tokenizer the job trains with."""
        return self.base_model or self.model


class FineTuningEvent(Base):
    """Append-only; `seq` gives one total order even for events in the same microsecond."""

    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("ix_fine_tuning_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class FineTuningCheckpoint(Base):
    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (Index("ix_fine_tuning_checkpoints_job_step", "job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    step_number: Mapped[int] = mapped_column(Integer)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(400))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Server-chosen folder (relative to the storage root) holding the weights and trainer state.
    storage_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FineTunedModel(Base):
    """A callable `ft:` id: a job's final model or one of its checkpoints, or a model imported
    from a folder or an uploaded archive (no job: `imported_from` says where it came from)."""

    __tablename__ = "fine_tuned_models"

    id: Mapped[str] = mapped_column(String(400), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), default=None
    )
    base_model: Mapped[str] = mapped_column(String(256))
    imported_from: Mapped[str | None] = mapped_column(String(1024), default=None)
    training_type: Mapped[str] = mapped_column(String(8))  # "lora" | "full"
    checkpoint_step: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
