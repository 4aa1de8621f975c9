"""`/v1/evals`: thin handlers; the service does the checks and status changes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from app.auth import CurrentProject, SessionDep
from app.evals.schemas import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    EvalDeleted,
    EvalList,
    EvalObject,
    EvalRunDeleted,
    EvalRunList,
    EvalRunObject,
    OutputItemList,
    OutputItemObject,
    UpdateEvalRequest,
)
from app.evals.service import EvalService

router = APIRouter(prefix="/v1/evals", tags=["evals"])

MAX_LIMIT = 100
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
OrderParam = Literal["asc", "desc"]


def eval_service(request: Request, session: SessionDep) -> EvalService:
    state = request.app.state
    return EvalService(session, state.settings, state.storage, state.job_queue)


Evals = Annotated[EvalService, Depends(eval_service)]


def _base_url(request: Request) -> str:
    return str(request.base_url)


def _ids(data: list[str]) -> tuple[str | None, str | None]:
    return (data[0], data[-1]) if data else (None, None)


@router.post("", response_model=EvalObject)
def create_eval(body: CreateEvalRequest, project: CurrentProject, evals: Evals) -> EvalObject:
    return EvalObject.of(evals.create(project, body))


@router.get("", response_model=EvalList)
def list_evals(
    project: CurrentProject,
    evals: Evals,
    after: str | None = None,
    limit: Limit = 20,
    order: OrderParam = "asc",
    order_by: Literal["created_at", "updated_at"] = "created_at",
) -> EvalList:
    page = evals.list(project, after=after, limit=limit, order=order, order_by=order_by)
    data = [EvalObject.of(row) for row in page.items]
    first, last = _ids([row.id for row in data])
    return EvalList(data=data, first_id=first, last_id=last, has_more=page.has_more)


@router.get("/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, project: CurrentProject, evals: Evals) -> EvalObject:
    return EvalObject.of(evals.get(project, eval_id))


@router.post("/{eval_id}", response_model=EvalObject)
def update_eval(
    eval_id: str, body: UpdateEvalRequest, project: CurrentProject, evals: Evals
) -> EvalObject:
    return EvalObject.of(evals.update(project, eval_id, body))


@router.delete("/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_id: str, project: CurrentProject, evals: Evals) -> EvalDeleted:
    return EvalDeleted(eval_id=evals.delete(project, eval_id))


@router.post("/{eval_id}/runs", response_model=EvalRunObject)
def create_run(
    eval_id: str,
    body: CreateEvalRunRequest,
    request: Request,
    project: CurrentProject,
    evals: Evals,
) -> EvalRunObject:
    """Create a run `queued`; its id reaches the queue only once committed."""
    return EvalRunObject.of(evals.create_run(project, eval_id, body), _base_url(request))


@router.get("/{eval_id}/runs", response_model=EvalRunList)
def list_runs(
    eval_id: str,
    request: Request,
    project: CurrentProject,
    evals: Evals,
    after: str | None = None,
    limit: Limit = 20,
    order: OrderParam = "asc",
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None,
) -> EvalRunList:
    page = evals.list_runs(project, eval_id, after=after, limit=limit, order=order, status=status)
    base = _base_url(request)
    data = [EvalRunObject.of(row, base) for row in page.items]
    first, last = _ids([row.id for row in data])
    return EvalRunList(data=data, first_id=first, last_id=last, has_more=page.has_more)


@router.get("/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
def retrieve_run(
    eval_id: str, run_id: str, request: Request, project: CurrentProject, evals: Evals
) -> EvalRunObject:
    return EvalRunObject.of(evals.get_run(project, eval_id, run_id), _base_url(request))


@router.post("/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=EvalRunObject)
def cancel_run(
    eval_id: str, run_id: str, request: Request, project: CurrentProject, evals: Evals
) -> EvalRunObject:
    """A queued or running run becomes `canceled`; a finished one is a 400. OpenAI's document
    names `POST .../runs/{run_id}`, its SDK sends `POST .../runs/{run_id}/cancel`: both work."""
    return EvalRunObject.of(evals.cancel_run(project, eval_id, run_id), _base_url(request))


@router.delete("/{eval_id}/runs/{run_id}", response_model=EvalRunDeleted)
def delete_run(eval_id: str, run_id: str, project: CurrentProject, evals: Evals) -> EvalRunDeleted:
    return EvalRunDeleted(run_id=evals.delete_run(project, eval_id, run_id))


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=OutputItemList)
def list_output_items(
    eval_id: str,
    run_id: str,
    project: CurrentProject,
    evals: Evals,
    after: str | None = None,
    limit: Limit = 20,
    order: OrderParam = "asc",
    status: Literal["pass", "fail"] | None = None,
) -> OutputItemList:
    page = evals.list_output_items(
        project, eval_id, run_id, after=after, limit=limit, order=order, status=status
    )
    data = [OutputItemObject.of(row) for row in page.items]
    first, last = _ids([row.id for row in data])
    return OutputItemList(data=data, first_id=first, last_id=last, has_more=page.has_more)


@router.get(
    "/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=OutputItemObject
)
def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, project: CurrentProject, evals: Evals
) -> OutputItemObject:
    return OutputItemObject.of(evals.get_output_item(project, eval_id, run_id, output_item_id))
