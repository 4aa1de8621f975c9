from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.orm import FineTunedModel


class ModelRepository:
    """Reads of `fine_tuned_models`; rows are written by the worker (`FineTuningRepository`)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str, model_id: str) -> FineTunedModel | None:
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
