"""`/v1/fine_tuning/jobs`: thin handlers; the service does the checks and status changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.auth import CurrentProject, SessionDep
from app.fine_tuning.schemas import (
    CreateFineTuningJobRequest,
    FineTuningJobCheckpointList,
    FineTuningJobCheckpointObject,
    FineTuningJobEventList,
    FineTuningJobEventObject,
    FineTuningJobList,
    FineTuningJobObject,
)
from app.fine_tuning.service import FineTuningService, parse_metadata_filter
from app.orm import FineTuningJob, Project

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

MAX_LIMIT = 100


def fine_tuning_service(request: Request, session: SessionDep) -> FineTuningService:
    state = request.app.state
    return FineTuningService(session, state.settings, state.job_queue)


Jobs = Annotated[FineTuningService, Depends(fine_tuning_service)]


def shown(
    jobs: FineTuningService, project: Project, rows: list[FineTuningJob]
) -> list[FineTuningJobObject]:
    """The job objects of ``rows``, each with its comparison table (one query for all)."""
    runs = jobs.comparison_runs(rows)
    return [
        FineTuningJobObject.of(job, project.name, runs.get(job.eval_id or "", ())) for job in rows
    ]


def one(jobs: FineTuningService, project: Project, job: FineTuningJob) -> FineTuningJobObject:
    return shown(jobs, project, [job])[0]


@router.post("", response_model=FineTuningJobObject)
def create_job(
    body: CreateFineTuningJobRequest, project: CurrentProject, jobs: Jobs
) -> FineTuningJobObject:
    """Create a job in `validating_files`; its id reaches the queue only once committed."""
    return one(jobs, project, jobs.create(project, body))


@router.get(
    "",
    response_model=FineTuningJobList,
    openapi_extra={
        "parameters": [
            {
                "name": "metadata",
                "in": "query",
                "style": "deepObject",
                "explode": True,
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                "description": "metadata[k]=v keeps jobs with that pair; metadata=null: none",
            }
        ]
    },
)
def list_jobs(
    request: Request,
    project: CurrentProject,
    jobs: Jobs,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> FineTuningJobList:
    metadata, metadata_is_null = parse_metadata_filter(request.query_params.multi_items())
    page = jobs.list(
        project, after=after, limit=limit, metadata=metadata, metadata_is_null=metadata_is_null
    )
    return FineTuningJobList(
        data=shown(jobs, project, list(page.items)),
        has_more=page.has_more,
    )


@router.get("/{job_id}", response_model=FineTuningJobObject)
def retrieve_job(job_id: str, project: CurrentProject, jobs: Jobs) -> FineTuningJobObject:
    return one(jobs, project, jobs.get(project, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJobObject)
def cancel_job(job_id: str, project: CurrentProject, jobs: Jobs) -> FineTuningJobObject:
    return one(jobs, project, jobs.cancel(project, job_id))


@router.post("/{job_id}/pause", response_model=FineTuningJobObject)
def pause_job(job_id: str, project: CurrentProject, jobs: Jobs) -> FineTuningJobObject:
    return one(jobs, project, jobs.pause(project, job_id))


@router.post("/{job_id}/resume", response_model=FineTuningJobObject)
def resume_job(job_id: str, project: CurrentProject, jobs: Jobs) -> FineTuningJobObject:
    """Back to `queued`; the worker continues from the last checkpoint it saved."""
    return one(jobs, project, jobs.resume(project, job_id))


@router.get("/{job_id}/events", response_model=FineTuningJobEventList)
def list_events(
    job_id: str,
    project: CurrentProject,
    jobs: Jobs,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> FineTuningJobEventList:
    page = jobs.list_events(project, job_id, after=after, limit=limit)
    return FineTuningJobEventList(
        data=[FineTuningJobEventObject.of(event) for event in page.items],
        has_more=page.has_more,
    )


@router.get("/{job_id}/checkpoints", response_model=FineTuningJobCheckpointList)
def list_checkpoints(
    job_id: str,
    project: CurrentProject,
    jobs: Jobs,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 10,
) -> FineTuningJobCheckpointList:
    page = jobs.list_checkpoints(project, job_id, after=after, limit=limit)
    data = [FineTuningJobCheckpointObject.of(checkpoint) for checkpoint in page.items]
    return FineTuningJobCheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )
