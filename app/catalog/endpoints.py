"""`/v1/models` (list, retrieve), and importing a model trained elsewhere (`POST`, a Tuna
extension; `app/catalog/imports.py`). Deleting a model lives with inference, which unloads it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.auth import CurrentProject, SessionDep
from app.catalog.imports import ImportModelRequest, ModelImporter
from app.catalog.schemas import ModelList, ModelObject
from app.catalog.service import CatalogService, fine_tuned_object

router = APIRouter(prefix="/v1/models", tags=["models"])


def catalog_service(request: Request, session: SessionDep) -> CatalogService:
    return CatalogService(session, request.app.state.settings)


Catalog = Annotated[CatalogService, Depends(catalog_service)]


@router.get("", response_model=ModelList)
def list_models(project: CurrentProject, catalog: Catalog) -> ModelList:
    return ModelList(data=catalog.list(project))


@router.post("", response_model=ModelObject)
def import_model(
    body: ImportModelRequest, request: Request, project: CurrentProject, session: SessionDep
) -> ModelObject:
    """Register an uploaded archive, or a server folder, as one of the project's models."""
    state = request.app.state
    row = ModelImporter(session, state.settings, state.storage).run(project, body)
    return fine_tuned_object(row, project)


# `:path` because ids contain '/' (HuggingFaceTB/SmolLM2-135M-Instruct) and ':' (ft:...).
@router.get("/{model:path}", response_model=ModelObject)
def retrieve_model(model: str, project: CurrentProject, catalog: Catalog) -> ModelObject:
    return catalog.get(project, model)
