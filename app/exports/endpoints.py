"""Download a fine-tuned model (a Tuna extension of `/v1/models`; see docs/export.md).

`GET /v1/models/{model}/content?format=adapter|merged|gguf[&quantization=f16|bf16|q8_0]` answers
200 with the artifact, or 202 with the export's status (and `Retry-After`) while a worker builds
it. `POST .../exports` starts (or retries) a build ahead of the download; `GET .../exports` lists
a model's builds. Registered before `/v1/models/{model:path}`, whose path would swallow these.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from app.auth import CurrentProject, SessionDep
from app.exports.archive import folder_archive
from app.exports.schemas import CreateExportRequest, ModelExportList, ModelExportObject
from app.exports.service import ExportService, Ready
from tuna_core.exports import export_key, parse_export_key

router = APIRouter(prefix="/v1/models", tags=["models"])

POLL_SECONDS = 5


def export_service(request: Request, session: SessionDep) -> ExportService:
    state = request.app.state
    return ExportService(session, state.settings, state.storage, state.job_queue)


Exports = Annotated[ExportService, Depends(export_service)]


def download_url(model: str, export_format: str, quantization: str | None) -> str:
    query = {"format": export_format, **({"quantization": quantization} if quantization else {})}
    return f"/v1/models/{model}/content?{urlencode(query)}"


@router.get(
    "/{model:path}/content",
    response_model=ModelExportObject,
    status_code=202,
    responses={200: {"description": "The artifact: a tar archive, or a .gguf file"}},
)
def download_model(
    model: str,
    project: CurrentProject,
    exports: Exports,
    format: Annotated[str, Query(description="adapter, merged or gguf")],
    quantization: Annotated[str | None, Query(description="gguf only: f16, bf16, q8_0")] = None,
) -> Response:
    result = exports.download(project, model, format, quantization)
    if isinstance(result, Ready):
        return _artifact(result)
    body = ModelExportObject.of(result, download_url(model, format, quantization))
    return JSONResponse(
        body.model_dump(mode="json"), status_code=202, headers={"Retry-After": str(POLL_SECONDS)}
    )


@router.post("/{model:path}/exports", response_model=ModelExportObject)
def create_export(
    model: str, body: CreateExportRequest, project: CurrentProject, exports: Exports
) -> ModelExportObject:
    url = download_url(model, body.format, body.quantization)
    result = exports.create(project, model, body.format, body.quantization)
    if isinstance(result, Ready):
        return ModelExportObject.stored(model, export_key(body.format, body.quantization), url)
    return ModelExportObject.of(result, url)


@router.get("/{model:path}/exports", response_model=ModelExportList)
def list_exports(model: str, project: CurrentProject, exports: Exports) -> ModelExportList:
    data = []
    for row in exports.list(project, model):
        export_format, quantization = parse_export_key(row.key)
        data.append(ModelExportObject.of(row, download_url(model, export_format, quantization)))
    return ModelExportList(data=data)


def _artifact(ready: Ready) -> Response:
    disposition = {"Content-Disposition": f'attachment; filename="{ready.filename}"'}
    if not ready.is_folder:
        return FileResponse(ready.path, media_type="application/octet-stream", headers=disposition)
    archive = folder_archive(ready.path, ready.filename.removesuffix(".tar"), ready.replaced)
    return StreamingResponse(
        archive.chunks(),
        media_type="application/x-tar",
        headers={**disposition, "Content-Length": str(archive.length)},
    )
