"""Built downloads of a fine-tuned model (merged folders, GGUF files), one row per artifact.

queued -> running -> succeeded | failed. A worker claims a row with a conditional UPDATE and
keeps a lease on it while it builds; a download request that finds the lease run out (the
worker died) or the message unsent sends it again, so nothing waits forever.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, utcnow


class ModelExport(Base):
    __tablename__ = "model_exports"
    __table_args__ = (UniqueConstraint("model_id", "key", name="uq_model_exports_model_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    model_id: Mapped[str] = mapped_column(
        ForeignKey("fine_tuned_models.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(32))  # tuna_core.exports.export_key
    status: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str | None] = mapped_column(String(256), default=None)
    bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
