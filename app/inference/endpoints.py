"""`/v1/chat/completions`, `/v1/completions` and `DELETE /v1/models/{model}`: thin handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from app.auth import CurrentProject, SessionDep
from app.inference.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelDeleted,
)
from app.inference.service import InferenceService

router = APIRouter(prefix="/v1", tags=["inference"])
# Registered beside the catalog's GET routes on the same path; only DELETE lives here.
models_router = APIRouter(prefix="/v1/models", tags=["models"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_STREAM_DOC: dict[str, Any] = {
    "responses": {"200": {"content": {"text/event-stream": {}}, "description": "stream=true"}}
}


def inference_service(request: Request, session: SessionDep) -> InferenceService:
    state = request.app.state
    return InferenceService(session, state.settings, state.storage, state.inference)


Inference = Annotated[InferenceService, Depends(inference_service)]


def _stream(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers=_SSE_HEADERS)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    openapi_extra=_STREAM_DOC,
)
async def create_chat_completion(
    body: ChatCompletionRequest, project: CurrentProject, inference: Inference
) -> Any:
    """OpenAI's chat completion; `stream: true` answers with server-sent events."""
    result = await inference.chat(project, body)
    return result if isinstance(result, ChatCompletion) else _stream(result)


@router.post("/completions", response_model=Completion, openapi_extra=_STREAM_DOC)
async def create_completion(
    body: CompletionRequest, project: CurrentProject, inference: Inference
) -> Any:
    """The legacy text completion: the raw prompt, no chat template."""
    result = await inference.complete(project, body)
    return result if isinstance(result, Completion) else _stream(result)


# `:path` because ids contain ':' and base names may contain '/'.
@models_router.delete("/{model:path}", response_model=ModelDeleted)
def delete_model(model: str, project: CurrentProject, inference: Inference) -> ModelDeleted:
    """Delete one of the caller's fine-tuned models (a final model or a checkpoint)."""
    return inference.delete_model(project, model)
