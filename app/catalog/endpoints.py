"""`/v1/models` (list, retrieve). Deleting a fine-tuned model comes with its own change."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.auth import CurrentProject, SessionDep
from app.catalog.schemas import ModelList, ModelObject
from app.catalog.service import CatalogService

router = APIRouter(prefix="/v1/models", tags=["models"])


def catalog_service(request: Request, session: SessionDep) -> CatalogService:
    return CatalogService(session, request.app.state.settings)


Catalog = Annotated[CatalogService, Depends(catalog_service)]


@router.get("", response_model=ModelList)
def list_models(project: CurrentProject, catalog: Catalog) -> ModelList:
    return ModelList(data=catalog.list(project))


# `:path` because ids contain '/' (HuggingFaceTB/SmolLM2-135M-Instruct) and ':' (ft:...).
@router.get("/{model:path}", response_model=ModelObject)
def retrieve_model(model: str, project: CurrentProject, catalog: Catalog) -> ModelObject:
    return catalog.get(project, model)
