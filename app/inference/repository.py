"""The inference side's queries: a project's fine-tuned model rows (read per request, deleted)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import FineTunedModel


class FineTunedModelRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str, model_id: str) -> FineTunedModel | None:
        """Only the owner's rows: another project's id is indistinguishable from an unknown one."""
        return self.session.scalar(
            select(FineTunedModel).where(
                FineTunedModel.id == model_id, FineTunedModel.project_id == project_id
            )
        )

    def delete(self, row: FineTunedModel) -> None:
        self.session.delete(row)
        self.session.flush()
