"""Wire shapes of model exports (a Tuna extension: OpenAI offers no download of a model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.orm import ModelExport
from app.orm.base import unix
from tuna_core.exports import parse_export_key


class CreateExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    quantization: str | None = None


class ExportError(BaseModel):
    code: str
    message: str


class ModelExportObject(BaseModel):
    """One artifact of a model; `download_url` answers 200 with it once `status` is succeeded."""

    object: Literal["model.export"] = "model.export"
    # None for an artifact Tuna already stores (a LoRA model's adapter, a full model's folder):
    # nothing is built, the download streams it.
    id: str | None
    model: str
    format: str
    quantization: str | None
    status: Literal["queued", "running", "succeeded", "failed"]
    bytes: int | None
    error: ExportError | None
    created_at: int
    finished_at: int | None
    download_url: str

    @classmethod
    def of(cls, row: ModelExport, download_url: str) -> ModelExportObject:
        export_format, quantization = parse_export_key(row.key)
        return cls(
            id=row.id,
            model=row.model_id,
            format=export_format,
            quantization=quantization,
            status=row.status,  # type: ignore[arg-type]
            bytes=row.bytes,
            error=ExportError(code="export_failed", message=row.error_message)
            if row.status == "failed" and row.error_message
            else None,
            created_at=unix(row.created_at) or 0,
            finished_at=unix(row.finished_at),
            download_url=download_url,
        )

    @classmethod
    def stored(cls, model_id: str, key: str, download_url: str) -> ModelExportObject:
        export_format, quantization = parse_export_key(key)
        return cls(
            id=None,
            model=model_id,
            format=export_format,
            quantization=quantization,
            status="succeeded",
            bytes=None,
            error=None,
            created_at=0,
            finished_at=None,
            download_url=download_url,
        )


class ModelExportList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelExportObject]
