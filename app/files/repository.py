from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.orm import File
from app.pagination import Order, Page, paginate


class FileRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, file: File) -> None:
        self.session.add(file)
        self.session.flush()

    def total_bytes(self, project_id: str, *, now: datetime) -> int:
        """Bytes of the project's files that have not expired."""
        query = select(func.coalesce(func.sum(File.bytes), 0)).where(
            File.project_id == project_id, or_(File.expires_at.is_(None), File.expires_at > now)
        )
        return int(self.session.scalar(query) or 0)

    def get(self, project_id: str, file_id: str, *, now: datetime) -> File | None:
        return self.session.scalar(
            select(File).where(
                File.id == file_id,
                File.project_id == project_id,
                or_(File.expires_at.is_(None), File.expires_at > now),
            )
        )

    def list(
        self,
        project_id: str,
        *,
        now: datetime,
        purpose: str | None,
        after: File | None,
        limit: int,
        order: Order,
    ) -> Page[File]:
        stmt = select(File).where(
            File.project_id == project_id, or_(File.expires_at.is_(None), File.expires_at > now)
        )
        if purpose:
            stmt = stmt.where(File.purpose == purpose)
        return paginate(
            self.session,
            stmt,
            created_at=File.created_at,
            id_column=File.id,
            after=after,
            limit=limit,
            order=order,
        )

    def delete(self, file: File) -> None:
        self.session.delete(file)
        self.session.flush()
