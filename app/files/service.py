"""Files: upload (streamed, validated for fine-tuning), list, retrieve, delete, content."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.config import Settings
from app.db import after_commit, after_rollback
from app.errors import InvalidRequest, NotFound
from app.files.repository import FileRepository
from app.files.schemas import UPLOAD_PURPOSES
from app.files.storage import LocalStorage
from app.files.upload import ChunkSink, MultipartUpload, read_multipart
from app.files.validation import DatasetValidator, ValidationReport, validate_file
from app.ids import new_id
from app.orm import File, Project
from app.orm.base import utcnow
from app.pagination import Order, Page
from app.quotas import hold_project

MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600


class FileService:
    def __init__(self, session: Session, storage: LocalStorage, settings: Settings) -> None:
        self.session = session
        self.storage = storage
        self.settings = settings
        self.files = FileRepository(session)

    async def upload(self, project: Project, request: Request) -> File:
        temp_path = self.storage.new_temp_path()
        validators: list[DatasetValidator] = []

        def validate_during_upload(fields_so_far: dict[str, str]) -> ChunkSink | None:
            if fields_so_far.get("purpose") != "fine-tune":
                return None
            validators.append(DatasetValidator(max_errors=self.settings.max_reported_line_errors))
            return validators[0]

        form = await read_multipart(
            request, temp_path, self.settings.max_upload_bytes, validate_during_upload
        )
        try:
            # Off the event loop: validation may read the whole file, and the quota check may
            # wait for another request's transaction, which needs the loop to commit.
            return await run_in_threadpool(
                self._store, project, form, validators[0] if validators else None
            )
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    def _store(
        self, project: Project, form: MultipartUpload, validator: DatasetValidator | None
    ) -> File:
        purpose = form.fields.get("purpose")
        if not purpose:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"'{purpose}' is not one of {list(UPLOAD_PURPOSES)} - 'purpose'",
                param="purpose",
            )
        if form.file is None:
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        expires_at = self._expiry(form.fields)
        report: ValidationReport | None = None
        if purpose == "fine-tune":
            # The file part may have come before `purpose`; then validate from disk now.
            report = (
                validator.finish()
                if validator
                else validate_file(
                    form.file.temp_path, max_errors=self.settings.max_reported_line_errors
                )
            )
            if not report.ok:
                raise InvalidRequest(report.summary(), param="file", code="invalid_file_format")

        # Last, right before the insert: the quota check holds the project until commit.
        self._check_storage_quota(project, form.file.size)
        return self._add(
            project.id,
            form.file.temp_path,
            filename=_clean_filename(form.file.filename),
            purpose=purpose,
            size=form.file.size,
            report=report,
            expires_at=expires_at,
        )

    def store_bytes(self, project_id: str, content: bytes, *, filename: str, purpose: str) -> File:
        """A file the server writes itself (a job's results CSV), stored exactly like an upload."""
        temp_path = self.storage.new_temp_path()
        temp_path.write_bytes(content)
        return self._add(
            project_id, temp_path, filename=filename, purpose=purpose, size=len(content)
        )

    def _add(
        self,
        project_id: str,
        temp_path: Path,
        *,
        filename: str,
        purpose: str,
        size: int,
        report: ValidationReport | None = None,
        expires_at: datetime | None = None,
    ) -> File:
        file_id = new_id("file-")
        row = File(
            id=file_id,
            project_id=project_id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            status="processed",
            storage_key=f"{project_id}/{file_id}",
            data_format=report.format.value if report and report.format else None,
            example_count=report.example_count if report else None,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        self.files.add(row)
        self._place_after_commit(temp_path, row.storage_key)
        return row

    def _check_storage_quota(self, project: Project, size: int) -> None:
        # Checked once the size is known (after streaming); the caller deletes the temp file.
        limit = self.settings.max_storage_bytes_per_project
        if not limit:
            return
        hold_project(self.session, project.id)  # racing uploads count one after the other
        used = self.files.total_bytes(project.id, now=utcnow())
        if used + size > limit:
            raise InvalidRequest(
                f"This upload of {size} bytes would exceed the project's storage quota: "
                f"{used} of {limit} bytes are in use. Delete files to make room.",
                param="file",
                code="storage_quota_exceeded",
            )

    def _place_after_commit(self, temp_path: Path, key: str) -> None:
        # Moved into place now so the worker can read it as soon as the row is visible; a
        # rolled-back transaction takes the bytes away again.
        self.storage.put(temp_path, key)
        after_rollback(self.session, lambda: self.storage.delete(key))

    def _expiry(self, fields: dict[str, str]) -> datetime | None:
        anchor = fields.get("expires_after[anchor]")
        seconds = fields.get("expires_after[seconds]")
        if anchor is None and seconds is None:
            return None
        if anchor != "created_at":
            raise InvalidRequest(
                "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
            )
        if seconds is None or not seconds.isdigit():
            raise InvalidRequest(
                "expires_after[seconds] must be an integer.", param="expires_after.seconds"
            )
        value = int(seconds)
        if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
            raise InvalidRequest(
                f"expires_after[seconds] must be between {MIN_EXPIRY_SECONDS} and "
                f"{MAX_EXPIRY_SECONDS}.",
                param="expires_after.seconds",
            )
        return utcnow() + timedelta(seconds=value)

    def get(self, project: Project, file_id: str) -> File:
        row = self.files.get(project.id, file_id, now=utcnow())
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return row

    def list(
        self, project: Project, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[File]:
        cursor = self.get(project, after) if after else None
        return self.files.list(
            project.id, now=utcnow(), purpose=purpose, after=cursor, limit=limit, order=order
        )

    def delete(self, project: Project, file_id: str) -> File:
        row = self.get(project, file_id)
        self.files.delete(row)
        key = row.storage_key
        after_commit(self.session, lambda: self.storage.delete(key))
        return row

    def content_path(self, project: Project, file_id: str) -> tuple[File, Path]:
        row = self.get(project, file_id)
        return row, self.storage.path(row.storage_key)


def usable_file(
    files: FileRepository, project_id: str, file_id: str, *, param: str, purpose: str, use: str
) -> File:
    """A processed file of the project, uploaded with ``purpose``, for ``use`` ("fine-tuning",
    "evals"); else a 400 naming ``param``. Another project's file is as absent as one that never
    existed: it is looked up with this project's id."""
    row = files.get(project_id, file_id, now=utcnow())
    if row is None:
        raise InvalidRequest(
            f"Invalid {param}: {file_id}. The file does not exist.",
            param=param,
            code="file_not_found",
        )
    if row.purpose != purpose:
        raise InvalidRequest(
            f"Invalid {param}: {file_id}. The file has purpose '{row.purpose}', but files "
            f"for {use} must be uploaded with purpose '{purpose}'.",
            param=param,
            code="invalid_file_purpose",
        )
    if row.status != "processed":
        raise InvalidRequest(
            f"Invalid {param}: {file_id}. The file is not ready (status '{row.status}').",
            param=param,
            code="file_not_ready",
        )
    return row


def _clean_filename(name: str) -> str:
    """Keep only the last path segment: the name is shown back, never used as a path."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "").strip()
    return (base or "upload")[:255]
