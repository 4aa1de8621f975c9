"""Register a model trained elsewhere as one of the project's `ft:` models.

From an uploaded archive (a `.tar`, `.tar.gz` or `.zip` of the folder, any purpose) or, where
the operator allows it (`TUNA_IMPORT_ROOTS`), a folder on the server. The folder is either a
peft LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`) of an offered base, or a
full transformers model (`config.json`, safetensors weights and a tokenizer) fine-tuned from one.

Everything is checked before anything is registered, and each refusal names its parameter:
pickled weights (`*.bin`, `*.pt`: loading them runs code) are refused; archives may not write
outside their folder (tarfile's `data` filter; zip names are checked) nor unpack beyond
`TUNA_MAX_IMPORT_BYTES`. The copy is staged under the storage's `tmp/`, moved into place inside
the transaction, and removed again if it rolls back.
"""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from app.catalog.base_models import find_offered_base_model
from app.config import Settings
from app.db import after_rollback
from app.errors import InvalidRequest, NotFound
from app.files.repository import FileRepository
from app.files.storage import LocalStorage
from app.ids import new_id
from app.orm import FineTunedModel, Project
from app.orm.base import utcnow
from tuna_core.base_models import UnknownBaseModel, resolve_base_model
from tuna_core.model_folders import MODEL_INFO_FILE, write_model_info
from tuna_core.model_ids import SUFFIX_PATTERN, fine_tuned_model_id

IMPORT_PREFIX = "ftimport-"
_PICKLES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ImportModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str | None = None
    path: str | None = None
    base_model: str | None = None
    suffix: str | None = None


@dataclass(frozen=True)
class _Checked:
    folder: Path
    training_type: str  # "lora" | "full"
    base_model: str


class ModelImporter:
    def __init__(self, session: Session, settings: Settings, storage: LocalStorage) -> None:
        self.session = session
        self.settings = settings
        self.storage = storage

    def run(self, project: Project, body: ImportModelRequest) -> FineTunedModel:
        if (body.file_id is None) == (body.path is None):
            raise InvalidRequest(
                "Give exactly one of 'file_id' (an uploaded .tar, .tar.gz or .zip of the model "
                "folder) and 'path' (a folder on the server).",
                param="file_id" if body.file_id is None else "path",
            )
        if body.suffix is not None and not SUFFIX_PATTERN.fullmatch(body.suffix):
            raise InvalidRequest(
                "Invalid value for 'suffix': use 1-64 letters, digits, '-' or '_'.",
                param="suffix",
            )
        staging = self.storage.new_temp_path()
        staging.mkdir(parents=True)
        try:
            if body.file_id is not None:
                source = body.file_id
                self._unpack(project, body.file_id, staging)
            else:
                source = self._copy_local(body.path or "", staging)
            checked = self._check(_model_folder(staging), body.base_model)
            return self._register(project, checked, body.suffix, source)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- getting the folder ---------------------------------------------------------------------

    def _unpack(self, project: Project, file_id: str, staging: Path) -> None:
        row = FileRepository(self.session).get(project.id, file_id, now=utcnow())
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        archive = self.storage.path(row.storage_key)
        limit = self.settings.max_import_bytes
        try:
            if zipfile.is_zipfile(archive):
                _unzip(archive, staging, limit)
            else:
                with tarfile.open(archive) as tar:
                    members = tar.getmembers()
                    if sum(m.size for m in members) > limit:
                        raise _TooBig(limit)
                    tar.extractall(staging, filter="data")
        except _TooBig as exc:
            raise InvalidRequest(str(exc), param="file_id", code="import_too_large") from exc
        except (tarfile.TarError, zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InvalidRequest(
                f"Invalid value for 'file_id': {file_id} ({row.filename}) is not a readable "
                f".tar, .tar.gz or .zip archive of a model folder ({exc}).",
                param="file_id",
                code="invalid_archive",
            ) from exc

    def _copy_local(self, path: str, staging: Path) -> str:
        roots = [Path(root).resolve() for root in self.settings.import_roots]
        if not roots:
            raise InvalidRequest(
                "Importing a folder by 'path' is disabled on this server (TUNA_IMPORT_ROOTS is "
                "empty); upload an archive of the folder and pass its 'file_id'.",
                param="path",
            )
        folder = Path(path).resolve()
        if not any(folder == root or root in folder.parents for root in roots):
            raise InvalidRequest(
                f"Invalid value for 'path': {path} is not inside an import root of this server "
                f"({', '.join(str(root) for root in roots)}).",
                param="path",
            )
        if not folder.is_dir():
            raise InvalidRequest(f"Invalid value for 'path': {path} is not a folder.", param="path")
        shutil.copytree(folder, staging, dirs_exist_ok=True, symlinks=False)
        return str(folder)

    # -- checking it ----------------------------------------------------------------------------

    def _check(self, folder: Path, base_model: str | None) -> _Checked:
        pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in _PICKLES)
        if pickles:
            raise InvalidRequest(
                f"The model folder holds pickled files ({', '.join(pickles[:5])}), which run "
                "code when loaded; save the weights as safetensors (save_pretrained's default).",
                param="file_id",
                code="unsafe_weights",
            )
        if (folder / "adapter_config.json").is_file():
            return self._check_adapter(folder, base_model)
        if (folder / "config.json").is_file():
            return self._check_full(folder, base_model)
        raise InvalidRequest(
            "The folder has neither adapter_config.json (a peft LoRA adapter) nor config.json "
            "(a transformers model).",
            param="file_id",
            code="invalid_model_folder",
        )

    def _check_adapter(self, folder: Path, base_model: str | None) -> _Checked:
        config = _read_json(folder / "adapter_config.json")
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise InvalidRequest(
                f"adapter_config.json: peft_type is {config.get('peft_type')!r}; only LoRA "
                "adapters can be imported.",
                param="file_id",
                code="invalid_model_folder",
            )
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise InvalidRequest(
                "The adapter folder has no adapter_model.safetensors.",
                param="file_id",
                code="invalid_model_folder",
            )
        # Tuna's own adapters name their base in tuna_model.json; peft's config may hold a path.
        declared = (
            _read_json(info).get("base_model")
            if (info := folder / MODEL_INFO_FILE).is_file()
            else None
        )
        base = self._base(
            base_model or declared or config.get("base_model_name_or_path"), given=base_model
        )
        self._check_shapes(weights, base)
        return _Checked(folder, "lora", base)

    def _check_full(self, folder: Path, base_model: str | None) -> _Checked:
        if not any(folder.glob("*.safetensors")):
            raise InvalidRequest(
                "The model folder has no *.safetensors weights.",
                param="file_id",
                code="invalid_model_folder",
            )
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
            raise InvalidRequest(
                "The model folder has no tokenizer (tokenizer.json): save the tokenizer with it.",
                param="file_id",
                code="invalid_model_folder",
            )
        if base_model is None:
            raise InvalidRequest(
                "Missing required parameter: 'base_model' (the base this model was fine-tuned "
                "from; see /v1/models).",
                param="base_model",
            )
        return _Checked(folder, "full", self._base(base_model, given=base_model))

    def _base(self, name: Any, *, given: str | None) -> str:
        info = find_offered_base_model(self.settings, name) if isinstance(name, str) else None
        if info is None:
            where = "'base_model'" if given else "adapter_config.json's base_model_name_or_path"
            raise InvalidRequest(
                f"Invalid value for {where}: {name!r} is not a base model of this server "
                "(see /v1/models); pass 'base_model'.",
                param="base_model",
                code="model_not_found",
            )
        return info.name

    def _check_shapes(self, weights: Path, base_model: str) -> None:
        """Each LoRA matrix must fit a linear layer of the base: checked from the safetensors
        header and the base's config.json, without loading either."""
        try:
            base_dir = resolve_base_model(
                base_model,
                self.settings.resolved_model_cache_dir,
                self.settings.base_model_folders,
            )
            base_config = _read_json(base_dir / "config.json")
        except (UnknownBaseModel, InvalidRequest, OSError):
            return  # the base is not at hand here: the first request that loads it will tell
        dims = _linear_dims(base_config)
        for name, shape in _safetensors_shapes(weights).items():
            if len(shape) != 2:
                continue
            size = shape[1] if "lora_A" in name else shape[0] if "lora_B" in name else None
            if size is not None and size not in dims:
                raise InvalidRequest(
                    f"The adapter does not fit {base_model}: {name} has shape {shape}, but the "
                    f"base's layers have sizes {sorted(dims)}.",
                    param="base_model",
                    code="adapter_mismatch",
                )

    # -- registering it -------------------------------------------------------------------------

    def _register(
        self, project: Project, checked: _Checked, suffix: str | None, source: str
    ) -> FineTunedModel:
        import_id = new_id(IMPORT_PREFIX)
        key = f"imports/{import_id}"
        target = self.storage.path(key)
        write_model_info(checked.folder, checked.base_model, checked.training_type)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(checked.folder, target)
        after_rollback(self.session, lambda: shutil.rmtree(target, ignore_errors=True))
        row = FineTunedModel(
            id=fine_tuned_model_id(checked.base_model, project.name, suffix, import_id),
            project_id=project.id,
            job_id=None,
            base_model=checked.base_model,
            imported_from=source,
            training_type=checked.training_type,
            storage_key=key,
            created_at=utcnow(),
        )
        self.session.add(row)
        self.session.flush()
        return row


class _TooBig(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"The archive unpacks to more than {limit} bytes (TUNA_MAX_IMPORT_BYTES).")


def _unzip(archive: Path, staging: Path, limit: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if sum(info.file_size for info in infos) > limit:
            raise _TooBig(limit)
        root = staging.resolve()
        for info in infos:
            target = (staging / info.filename).resolve()
            if root != target and root not in target.parents:
                raise ValueError(f"{info.filename!r} would be written outside the folder")
        zf.extractall(staging)


def _model_folder(staging: Path) -> Path:
    """The folder itself, or the one folder an archive wrapped it in."""
    markers = ("adapter_config.json", "config.json")
    if any((staging / marker).is_file() for marker in markers):
        return staging
    children = [child for child in staging.iterdir() if not child.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return staging


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"{path.name} is not valid JSON ({exc}).", param="file_id", code="invalid_model_folder"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"{path.name} is not a JSON object.", param="file_id", code="invalid_model_folder"
        )
    return data


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header (8-byte length, then JSON)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100 * 1024 * 1024:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise InvalidRequest(
            f"{path.name} is not a safetensors file ({exc}).",
            param="file_id",
            code="invalid_model_folder",
        ) from exc
    return {
        name: list(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "shape" in entry
    }


def _linear_dims(config: dict[str, Any]) -> set[int]:
    """Input and output sizes of a decoder's linear layers (attention, MLP), from config.json."""
    hidden = int(config.get("hidden_size", 0))
    heads = int(config.get("num_attention_heads", 1) or 1)
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    dims = {hidden, heads * head_dim, kv_heads * head_dim}
    if config.get("intermediate_size"):
        dims.add(int(config["intermediate_size"]))
    return dims
