from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from app.auth import CurrentProject, SessionDep
from app.files.schemas import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from app.files.service import FileService

router = APIRouter(prefix="/v1/files", tags=["files"])


def file_service(request: Request, session: SessionDep) -> FileService:
    return FileService(session, request.app.state.storage, request.app.state.settings)


Files = Annotated[FileService, Depends(file_service)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def create_file(request: Request, project: CurrentProject, files: Files) -> FileObject:
    """Upload a file; `fine-tune` files are validated line by line while they stream in."""
    return FileObject.of(await files.upload(project, request))


@router.get("", response_model=FileList)
def list_files(
    project: CurrentProject,
    files: Files,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FileList:
    page = files.list(project, purpose=purpose, after=after, limit=limit, order=order)
    data = [FileObject.of(row) for row in page.items]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, project: CurrentProject, files: Files) -> FileObject:
    return FileObject.of(files.get(project, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, project: CurrentProject, files: Files) -> FileDeleted:
    return FileDeleted(id=files.delete(project, file_id).id)


@router.get("/{file_id}/content", response_class=FileResponse)
def file_content(file_id: str, project: CurrentProject, files: Files) -> FileResponse:
    row, path = files.content_path(project, file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)
