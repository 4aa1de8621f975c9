"""`model_exports` rows: the API creates and re-sends them, a worker claims and finishes them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.ids import new_id
from app.orm import ModelExport
from app.orm.base import utcnow

EXPORT_PREFIX = "mexp-"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


def export_folder(export_id: str) -> str:
    """The storage folder an export's files are built in (and removed with, with its model)."""
    return f"exports/{export_id}"


class ExportRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, export_id: str) -> ModelExport | None:
        return self.session.get(ModelExport, export_id)

    def find(self, model_id: str, key: str) -> ModelExport | None:
        return self.session.scalar(
            select(ModelExport).where(ModelExport.model_id == model_id, ModelExport.key == key)
        )

    def of_model(self, model_id: str) -> Sequence[ModelExport]:
        return self.session.scalars(
            select(ModelExport)
            .where(ModelExport.model_id == model_id)
            .order_by(ModelExport.created_at, ModelExport.id)
        ).all()

    def create(self, project_id: str, model_id: str, key: str) -> ModelExport:
        row = ModelExport(
            id=new_id(EXPORT_PREFIX),
            project_id=project_id,
            model_id=model_id,
            key=key,
            status=QUEUED,
            attempt=0,
            created_at=utcnow(),
        )
        self.session.add(row)
        self.session.flush()
        return row

    def claim_send(self, export_id: str, at: datetime, *, stale_before: datetime) -> bool:
        """The right to send an export's message: a queued one whose message is not known to
        be sent recently, or a running one whose worker stopped renewing its lease (died).
        True for exactly one of several racing requests."""
        result = self.session.execute(
            update(ModelExport)
            .where(
                ModelExport.id == export_id,
                or_(
                    (ModelExport.status == QUEUED)
                    & (
                        ModelExport.enqueued_at.is_(None) | (ModelExport.enqueued_at < stale_before)
                    ),
                    (ModelExport.status == RUNNING) & (ModelExport.lease_expires_at < at),
                ),
            )
            .values(status=QUEUED, enqueued_at=at, worker_id=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def mark_enqueued(self, export_id: str, at: datetime) -> None:
        self._move(export_id, {QUEUED}, enqueued_at=at)

    def forget_files(self, export_id: str) -> None:
        """succeeded -> queued when its files are gone (a restored volume): built again."""
        self._move(
            export_id, {SUCCEEDED}, status=QUEUED, storage_key=None, bytes=None, enqueued_at=None
        )

    def storage_keys(self, model_id: str) -> list[str]:
        """The folders of a model's exports (built or half built), to remove with the model."""
        ids = self.session.scalars(select(ModelExport.id).where(ModelExport.model_id == model_id))
        return [export_folder(export_id) for export_id in ids]

    def retry(self, export_id: str, at: datetime) -> bool:
        """failed -> queued, for an explicit new attempt."""
        return self._move(
            export_id, {FAILED}, status=QUEUED, enqueued_at=at, error_message=None, finished_at=None
        )

    def claim(self, export_id: str, worker_id: str, until: datetime) -> bool:
        """queued -> running for this worker (a duplicate message finds it taken)."""
        result = self.session.execute(
            update(ModelExport)
            .where(ModelExport.id == export_id, ModelExport.status == QUEUED)
            .values(
                status=RUNNING,
                worker_id=worker_id,
                lease_expires_at=until,
                started_at=utcnow(),
                attempt=ModelExport.attempt + 1,
            )
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def renew_lease(self, export_id: str, worker_id: str, until: datetime) -> None:
        self.session.execute(
            update(ModelExport)
            .where(
                ModelExport.id == export_id,
                ModelExport.worker_id == worker_id,
                ModelExport.status == RUNNING,
            )
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )

    def finish(self, export_id: str, worker_id: str, **values: Any) -> bool:
        """running -> succeeded | failed, only while this worker still owns the attempt."""
        result = self.session.execute(
            update(ModelExport)
            .where(
                ModelExport.id == export_id,
                ModelExport.worker_id == worker_id,
                ModelExport.status == RUNNING,
            )
            .values(finished_at=utcnow(), lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def _move(self, export_id: str, only_from: set[str], **values: Any) -> bool:
        result = self.session.execute(
            update(ModelExport)
            .where(ModelExport.id == export_id, ModelExport.status.in_(only_from))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]
