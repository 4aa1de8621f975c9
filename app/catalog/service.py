"""The models a project can call: the server's base models and the project's own `ft:` models.

A fine-tuned model of another project is reported exactly like one that does not exist.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.catalog.base_models import available_base_models, find_offered_base_model
from app.catalog.repository import ModelRepository
from app.catalog.schemas import ModelObject
from app.config import Settings
from app.errors import NotFound
from app.orm import FineTunedModel, Project
from app.orm.base import unix

BASE_MODEL_OWNER = "tuna"


class CatalogService:
    def __init__(self, session: Session, settings: Settings) -> None:
        self.settings = settings
        self.models = ModelRepository(session)

    def list(self, project: Project) -> list[ModelObject]:
        bases = [
            ModelObject(id=info.name, created=info.created, owned_by=BASE_MODEL_OWNER)
            for info in available_base_models(self.settings)
        ]
        return bases + [fine_tuned_object(row, project) for row in self.models.list(project.id)]

    def get(self, project: Project, model_id: str) -> ModelObject:
        base = find_offered_base_model(self.settings, model_id)
        if base is not None:
            # An alias answers under the name it was asked by, as OpenAI's aliases do.
            return ModelObject(id=model_id, created=base.created, owned_by=BASE_MODEL_OWNER)
        row = self.models.get(project.id, model_id)
        if row is None:
            raise NotFound(
                f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        return fine_tuned_object(row, project)

    def fine_tuned_model(self, project: Project, model_id: str) -> FineTunedModel | None:
        """The project's `ft:` row (final model or checkpoint), for callers like inference."""
        return self.models.get(project.id, model_id)


def fine_tuned_object(row: FineTunedModel, project: Project) -> ModelObject:
    return ModelObject(id=row.id, created=unix(row.created_at) or 0, owned_by=project.name)
