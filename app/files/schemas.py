"""Wire shapes of the Files API, exactly as OpenAI's `FileObject` and list envelope."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.orm import File
from app.orm.base import unix
from app.wire import OmitWhenNone

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


class FileObject(OmitWhenNone):
    # Optional, never null, in OpenAI's `OpenAIFile`: absent while the file has no expiry
    # and no (deprecated) status details.
    omit_when_none = frozenset({"expires_at", "status_details"})

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None

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
    # Always present; null only on an empty page, which is what OpenAI sends there.
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
