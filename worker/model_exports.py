"""Build a model export (`app/exports`): merge a LoRA model into its base, convert to GGUF.

The conversions are `worker.export` (no database, no queue); this adapts them to an export row:
claim it (a duplicate message finds it taken), keep a lease while building (a worker that dies
stops renewing, and the next download request sends the export again), write into a temporary
folder and move the result into place, then record it. A conversion error fails the export with
its message; the download answers it and `POST .../exports` tries again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from app.config import Settings
from app.db import Database
from app.exports.repository import FAILED, SUCCEEDED, ExportRepository, export_folder
from app.files.storage import LocalStorage
from app.orm import FineTunedModel
from app.orm.base import utcnow
from tuna_core.base_models import resolve_base_model
from tuna_core.exports import parse_export_key
from worker.heartbeat import Lease

logger = logging.getLogger("tuna.worker")


class ExportBuilder:
    def __init__(
        self, settings: Settings, database: Database, storage: LocalStorage, worker_id: str
    ) -> None:
        self.settings = settings
        self.db = database
        self.storage = storage
        self.worker_id = worker_id
        self.lease = timedelta(seconds=settings.job_lease_seconds)

    def run(self, export_id: str) -> None:
        with self.db.session_scope() as session:
            exports = ExportRepository(session)
            if not exports.claim(export_id, self.worker_id, utcnow() + self.lease):
                return  # taken, finished, or gone with its model
            row = exports.get(export_id)
            model = session.get(FineTunedModel, row.model_id) if row else None
            if row is None or model is None:
                return
            key, model_key = row.key, model.storage_key
            base_model, training_type = model.base_model, model.training_type
        logger.info("building export %s (%s of %s)", export_id, key, model_key)
        name = "model.gguf" if parse_export_key(key)[0] == "gguf" else key
        target_key = f"{export_folder(export_id)}/{name}"
        try:
            with Lease(self._renew(export_id), self.lease, name=f"lease-{export_id}"):
                self._build(key, model_key, base_model, training_type, target_key)
        except Exception as exc:
            logger.warning("export %s failed", export_id, exc_info=True)
            self._finish(export_id, status=FAILED, error_message=_describe(exc))
            return
        target = self.storage.path(target_key)
        size = _size(target)
        if not self._finish(export_id, status=SUCCEEDED, storage_key=target_key, bytes=size):
            _remove(target)  # the attempt was lost to another worker meanwhile

    def _build(
        self, key: str, model_key: str, base_model: str, training_type: str, target_key: str
    ) -> None:
        from worker.export.gguf import write_gguf
        from worker.export.merge import write_merged

        model_dir = self.storage.path(model_key)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"the model's files are missing ({model_key})")
        target = self.storage.path(target_key)
        _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if key == "merged":  # a LoRA model: full models stream their own folder
            write_merged(self._base_dir(base_model), model_dir, target)
            return
        _, quantization = parse_export_key(key)
        assert quantization is not None  # a GGUF key: the only other kind built here
        if training_type == "full":
            write_gguf(model_dir, target, quantization)
            return
        with tempfile.TemporaryDirectory(dir=self.storage.tmp_dir) as scratch:
            merged = write_merged(self._base_dir(base_model), model_dir, Path(scratch) / "merged")
            write_gguf(merged, target, quantization)

    def _base_dir(self, base_model: str) -> Path:
        return resolve_base_model(
            base_model, self.settings.resolved_model_cache_dir, self.settings.base_model_folders
        )

    def _renew(self, export_id: str) -> Callable[[], None]:
        def renew() -> None:
            with self.db.session_scope() as session:
                ExportRepository(session).renew_lease(
                    export_id, self.worker_id, utcnow() + self.lease
                )

        return renew

    def _finish(self, export_id: str, **values: object) -> bool:
        with self.db.session_scope() as session:
            return ExportRepository(session).finish(export_id, self.worker_id, **values)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
