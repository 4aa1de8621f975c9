"""Downloads of a project's `ft:` models: straight from storage, or built once by a worker.

`download` answers with what to stream (a folder as tar, or one file) when the artifact exists,
and otherwise with the export row, created and sent to a worker on the first ask. Polling it is
what keeps a build going: an export whose message was lost, or whose worker died (its lease ran
out), is sent again by the next ask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from app.catalog.base_models import find_offered_base_model
from app.catalog.repository import ModelRepository
from app.config import Settings
from app.db import after_commit, send_after_commit
from app.errors import APIError, InvalidRequest, NotFound
from app.exports.queue import ExportQueue
from app.exports.repository import FAILED, SUCCEEDED, ExportRepository
from app.files.storage import LocalStorage
from app.orm import FineTunedModel, ModelExport, Project
from app.orm.base import utcnow
from tuna_core.exports import (
    EXPORT_FORMATS,
    GGUF_TYPES,
    download_name,
    export_key,
    needs_build,
)

# A queued export's message is sent again after this long without a worker taking it (a broker
# that lost it); duplicates are harmless, a worker's claim is atomic.
RESEND_AFTER = timedelta(minutes=5)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Ready:
    """An artifact to stream: a folder (sent as a tar archive) or one file."""

    path: Path
    filename: str
    is_folder: bool
    # Files of the folder sent with other content (by their path inside it).
    replaced: dict[str, bytes] = field(default_factory=dict)


class ExportService:
    def __init__(
        self, session: Session, settings: Settings, storage: LocalStorage, queue: ExportQueue
    ) -> None:
        self.session = session
        self.settings = settings
        self.storage = storage
        self.queue = queue
        self.models = ModelRepository(session)
        self.exports = ExportRepository(session)

    def download(
        self, project: Project, model_id: str, export_format: str, quantization: str | None
    ) -> Ready | ModelExport:
        model = self._model(project, model_id)
        key = self._key(model, export_format, quantization)
        if not needs_build(export_format, model.training_type):
            return self._stored(model, key)
        row = self.exports.find(model.id, key) or self._create(project, model, key)
        if row.status == SUCCEEDED and row.storage_key:
            path = self.storage.path(row.storage_key)
            if path.exists():
                return Ready(path, download_name(model.id, key), is_folder=path.is_dir())
            # Files lost (a restored volume): build again.
            self.exports.forget_files(row.id)
            self.session.refresh(row)
        if row.status == FAILED:
            raise APIError(
                f"Exporting `{model.id}` as {key} failed: {row.error_message}. "
                f"POST /v1/models/{model.id}/exports with the same format to try again.",
                param="format",
                code="export_failed",
                status_code=500,
            )
        self._send_if_stale(row)
        return row

    def create(
        self, project: Project, model_id: str, export_format: str, quantization: str | None
    ) -> ModelExport | Ready:
        """Build ahead of the download; a failed export is tried again."""
        model = self._model(project, model_id)
        key = self._key(model, export_format, quantization)
        if not needs_build(export_format, model.training_type):
            return self._stored(model, key)
        row = self.exports.find(model.id, key)
        if row is None:
            return self._create(project, model, key)
        if row.status == FAILED and self.exports.retry(row.id, utcnow()):
            self._enqueue_after_commit(row.id)
            self.session.refresh(row)
        else:
            self._send_if_stale(row)
        return row

    def list(self, project: Project, model_id: str) -> list[ModelExport]:
        return list(self.exports.of_model(self._model(project, model_id).id))

    # -- helpers --------------------------------------------------------------------------------

    def _model(self, project: Project, model_id: str) -> FineTunedModel:
        row = self.models.get(project.id, model_id)
        if row is not None:
            return row
        if find_offered_base_model(self.settings, model_id) is not None:
            raise InvalidRequest(
                f"The model `{model_id}` is a base model: only fine-tuned (ft:) models of your "
                "project can be exported.",
                param="model",
                code="model_not_exportable",
            )
        raise NotFound(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )

    @staticmethod
    def _key(model: FineTunedModel, export_format: str, quantization: str | None) -> str:
        if export_format not in EXPORT_FORMATS:
            raise InvalidRequest(
                f"Invalid value for 'format': '{export_format}' is not one of "
                f"{list(EXPORT_FORMATS)}.",
                param="format",
                code="invalid_format",
            )
        if export_format != "gguf" and quantization is not None:
            raise InvalidRequest(
                f"'quantization' applies to the gguf format only, not '{export_format}'.",
                param="quantization",
            )
        if quantization is not None and quantization not in GGUF_TYPES:
            raise InvalidRequest(
                f"Invalid value for 'quantization': '{quantization}' is not one of "
                f"{list(GGUF_TYPES)}.",
                param="quantization",
            )
        if export_format == "adapter" and model.training_type == "full":
            raise InvalidRequest(
                f"`{model.id}` is a full fine-tune: it has no adapter. Export it as 'merged' "
                "(its own weights) or 'gguf'.",
                param="format",
                code="invalid_format",
            )
        return export_key(export_format, quantization)

    def _stored(self, model: FineTunedModel, key: str) -> Ready:
        folder = self._model_folder(model)
        replaced = {}
        if (folder / ADAPTER_CONFIG).is_file():
            replaced[ADAPTER_CONFIG] = self._portable_adapter_config(folder, model.base_model)
        return Ready(folder, download_name(model.id, key), is_folder=True, replaced=replaced)

    def _portable_adapter_config(self, folder: Path, base_model: str) -> bytes:
        """The adapter's config naming its base as the world knows it (the Hugging Face id where
        the base has one), not as a folder of this server: peft loads it anywhere."""
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        info = find_offered_base_model(self.settings, base_model)
        names = [*(info.aliases if info else ()), info.name if info else base_model]
        config["base_model_name_or_path"] = next((n for n in names if "/" in n), names[-1])
        return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()

    def _model_folder(self, model: FineTunedModel) -> Path:
        path = self.storage.path(model.storage_key)
        if not path.is_dir():
            raise APIError(
                f"The files of model `{model.id}` are missing on this server.",
                param="model",
                code="model_files_missing",
                status_code=500,
            )
        return path

    def _create(self, project: Project, model: FineTunedModel, key: str) -> ModelExport:
        row = self.exports.create(project.id, model.id, key)
        self._enqueue_after_commit(row.id)
        return row

    def _send_if_stale(self, row: ModelExport) -> None:
        now = utcnow()
        if self.exports.claim_send(row.id, now, stale_before=now - RESEND_AFTER):
            queue, export_id = self.queue, row.id
            self.session.refresh(row)
            after_commit(self.session, lambda: queue.enqueue_export(export_id))

    def _enqueue_after_commit(self, export_id: str) -> None:
        queue = self.queue
        send_after_commit(
            self.session,
            export_id,
            lambda: queue.enqueue_export(export_id),
            lambda session: ExportRepository(session).mark_enqueued(export_id, utcnow()),
        )
