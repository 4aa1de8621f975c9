from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import FineTunedModel


class ModelRepository:
    """A project's `fine_tuned_models` rows, for /v1/models and inference; the worker writes
    them (`FineTuningRepository`)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str, model_id: str) -> FineTunedModel | None:
        """Only the owner's rows: another project's id is indistinguishable from an unknown one."""
        return self.session.scalar(
            select(FineTunedModel).where(
                FineTunedModel.id == model_id, FineTunedModel.project_id == project_id
            )
        )

    def list(self, project_id: str) -> Sequence[FineTunedModel]:
        return self.session.scalars(
            select(FineTunedModel)
            .where(FineTunedModel.project_id == project_id)
            .order_by(FineTunedModel.created_at.desc(), FineTunedModel.id.desc())
        ).all()

    def delete(self, row: FineTunedModel) -> None:
        self.session.delete(row)
        self.session.flush()
