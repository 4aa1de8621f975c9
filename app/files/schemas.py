"""Wire shapes of the Files API, exactly as OpenAI's `FileObject` and list envelope."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.orm import File
from app.orm.base import unix

UPLOAD_PURPOSES = ("fine-tune", "batch", "assistants", "vision", "user_data", "evals")
Purpose = Literal[
    "fine-tune",
    "fine-tune-results",
    "batch",
    "batch_output",
    "assistants",
    "vision",
    "user_data",
    "evals",
]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None

    @classmethod
    def of(cls, row: File) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=unix(row.created_at) or 0,
            expires_at=unix(row.expires_at),
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,  # type: ignore[arg-type]
            status_details=row.status_details,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
