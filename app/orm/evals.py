"""Evals, their runs and each run's output items (OpenAI's Evals API).

A run moves queued -> in_progress -> completed | failed, or to canceled from queued or
in_progress; its crash-recovery columns (`attempt`, `worker_id`, `lease_expires_at`,
`enqueued_at`) work exactly like a fine-tuning job's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, utcnow


class Eval(Base):
    __tablename__ = "evals"
    __table_args__ = (Index("ix_evals_project_created", "project_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(512), default=None)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, default=None)
    # As returned: `{"type": "custom", "schema": {... "item": <item_schema> ...}}`.
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalRun(Base):
    """One run of an eval over a data source; `status` changes by conditional UPDATEs only."""

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_eval_created", "eval_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(512), default=None)
    model: Mapped[str] = mapped_column(String(400))
    # As returned (`{"type": "completions", "source": ..., "input_messages": ..., ...}`).
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, default=None)
    status: Mapped[str] = mapped_column(String(20), index=True)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    result_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, default=None)
    per_testing_criteria_results: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON, default=None
    )
    per_model_usage: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    items_total: Mapped[int] = mapped_column(Integer, default=0)
    items_done: Mapped[int] = mapped_column(Integer, default=0)
    # Crash recovery, as for fine-tuning jobs.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class EvalOutputItem(Base):
    """One graded item of a run; unique per (run, item) so a resumed run never writes twice."""

    __tablename__ = "eval_output_items"
    __table_args__ = (
        UniqueConstraint("run_id", "datasource_item_id", name="uq_eval_output_items_run_item"),
        Index("ix_eval_output_items_run_created", "run_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(String(40))
    datasource_item_id: Mapped[int] = mapped_column(Integer)
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSON)
    sample: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(8), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
