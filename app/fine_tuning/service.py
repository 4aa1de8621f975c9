"""Fine-tuning jobs: create (checked, then enqueued after commit), read, cancel, pause, resume.

Every status change goes through `lifecycle.JobLifecycle`, so a request racing the worker (a
cancel landing as the job finishes) ends in exactly one consistent state; the loser gets a 400
that names the status it found.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.catalog.base_models import find_offered_base_model
from app.catalog.repository import ModelRepository
from app.config import Settings
from app.db import send_after_commit
from app.errors import InvalidRequest, NotFound, RateLimited
from app.evals.repository import EvalRepository
from app.files.repository import FileRepository
from app.files.service import usable_file
from app.fine_tuning import hyperparameters as hp
from app.fine_tuning.lifecycle import JobLifecycle
from app.fine_tuning.queue import JobQueue
from app.fine_tuning.repository import JOB_PREFIX, FineTuningRepository
from app.fine_tuning.schemas import CreateFineTuningJobRequest
from app.fine_tuning.state import ACTIVE, JobStatus
from app.ids import new_id
from app.metadata import check_metadata
from app.orm import (
    EvalRun,
    FineTunedModel,
    FineTuningCheckpoint,
    FineTuningEvent,
    FineTuningJob,
    Project,
)
from app.orm.base import utcnow
from app.pagination import Page
from app.quotas import hold_project
from tuna_core.dataset import METHOD_FORMATS
from tuna_core.hyperparameters import EXTENSION_DEFAULTS
from tuna_core.integrations import IntegrationConfigError, check_integrations
from tuna_core.model_ids import SUFFIX_PATTERN

logger = logging.getLogger("tuna.fine_tuning")

MAX_SEED = 2_147_483_647
METHOD_TYPES = ("supervised", "dpo", "reinforcement")
SUPPORTED_METHODS = ("supervised", "dpo")
FINE_TUNE_PURPOSE = "fine-tune"
FINE_TUNED_PREFIX = "ft:"
# What a LoRA adapter keeps when training continues it: the engine loads it with its own config.
ADAPTER_KEYS = ("lora_rank", "lora_alpha", "lora_dropout")


@dataclass(frozen=True)
class ValidatedJob:
    """A create request after every check that needs no database."""

    suffix: str | None
    seed: int
    method: str  # one of SUPPORTED_METHODS
    hyperparameters: dict[str, Any]
    metadata: dict[str, str] | None
    integrations: list[Any] | None
    # Where the caller set each hyperparameter it set (`method.dpo.hyperparameters.beta` or
    # `hyperparameters.n_epochs`), for errors found later that name one.
    given: dict[str, str]


@dataclass(frozen=True)
class StartingPoint:
    """The weights a job starts from: a base model, or one of the project's `ft:` models."""

    base_model: str  # canonical name of the base the weights descend from
    source: FineTunedModel | None = None  # continued training: the model it continues


class FineTuningService:
    def __init__(self, session: Session, settings: Settings, queue: JobQueue) -> None:
        self.session = session
        self.settings = settings
        self.queue = queue
        self.jobs = FineTuningRepository(session)
        self.lifecycle = JobLifecycle(session)
        self.files = FileRepository(session)

    # Create -------------------------------------------------------------------------------

    def create(self, project: Project, request: CreateFineTuningJobRequest) -> FineTuningJob:
        checked = validate_create(request)
        start = self._starting_point(project, request.model)
        hyperparameters = dict(checked.hyperparameters)
        notes = self._continue_from(start, checked, hyperparameters) if start.source else []
        hp.check_combination(hyperparameters, checked.given, checked.method)
        self._check_file(project, request.training_file, "training_file", checked.method)
        self._check_running_quota(project)
        if request.validation_file is not None:
            self._check_file(project, request.validation_file, "validation_file", checked.method)
        auto_eval = auto_eval_setting(
            request.auto_eval, request.validation_file, self.settings.job_eval_max_items
        )

        job = self.jobs.add_job(
            FineTuningJob(
                id=new_id(JOB_PREFIX),
                project_id=project.id,
                # The caller's `ft:` id as given; a base model under its canonical name.
                model=start.source.id if start.source else start.base_model,
                base_model=start.base_model,
                init_from=start.source.storage_key if start.source else None,
                training_file=request.training_file,
                validation_file=request.validation_file,
                suffix=checked.suffix,
                seed=checked.seed,
                method_type=checked.method,
                hyperparameters=hyperparameters,
                status=JobStatus.VALIDATING_FILES.value,
                result_files=[],
                metadata_=checked.metadata,
                integrations=checked.integrations,
                auto_eval=auto_eval,
                created_at=utcnow(),
            )
        )
        self.jobs.add_event(job.id, f"Created fine-tuning job: {job.id}")
        for level, note in notes:
            self.jobs.add_event(job.id, note, level=level)
        self.jobs.add_event(job.id, f"Validating training file: {job.training_file}")
        if job.validation_file:
            self.jobs.add_event(job.id, f"Validating validation file: {job.validation_file}")
        self._enqueue_after_commit(job.id)
        return job

    def _starting_point(self, project: Project, model: str) -> StartingPoint:
        """A base model the server offers, or a `ft:` model (final or checkpoint) of the
        project; another project's `ft:` model answers exactly like one that does not exist."""
        base = find_offered_base_model(self.settings, model)
        if base is not None:
            return StartingPoint(base.name)
        source = ModelRepository(self.session).get(project.id, model)
        if source is None:
            message = f"The model '{model}' does not exist or you do not have access to it."
            if model.startswith(FINE_TUNED_PREFIX):
                raise NotFound(message, param="model", code="model_not_found")
            raise InvalidRequest(message, param="model", code="model_not_found")
        base = find_offered_base_model(self.settings, source.base_model)
        if base is None:
            raise InvalidRequest(
                f"The model '{model}' was fine-tuned from '{source.base_model}', which this "
                "server no longer offers.",
                param="model",
                code="model_not_found",
            )
        return StartingPoint(base.name, source)

    def _continue_from(
        self, start: StartingPoint, checked: ValidatedJob, hyperparameters: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """Check and settle a continued job's training type and LoRA shape (`hyperparameters`
        is updated in place); returns the events (level, message) that tell the caller.

        A full fine-tune cannot take a LoRA adapter on top (the result would need a base no
        server has); a LoRA source continues as the same adapter, or is merged for full
        training. Without a `training_type`, the job keeps its source's.
        """
        source = start.source
        assert source is not None
        param = checked.given.get("training_type")
        if param is None:
            hyperparameters["training_type"] = source.training_type
        if source.training_type == "full":
            if hyperparameters["training_type"] == "lora":
                raise InvalidRequest(
                    f"Invalid value for '{param}': '{source.id}' is a full fine-tune, which "
                    "cannot be continued with LoRA. Use training_type 'full' (or leave it out).",
                    param=param,
                    code="invalid_training_type",
                )
            return [("info", f"Continuing the full fine-tune {source.id} of {start.base_model}")]
        if hyperparameters["training_type"] == "full":
            return [
                (
                    "info",
                    f"Training every weight of {start.base_model} with the LoRA adapter of "
                    f"{source.id} merged in",
                )
            ]
        # LoRA on LoRA: the adapter is trained further as it is, with its own rank, alpha and
        # dropout (the source job stored the ones its adapter has; this one does too).
        source_job = self.jobs.get_job(source.job_id) if source.job_id else None
        if source_job is not None:
            stored = source_job.hyperparameters
        else:  # an imported adapter: its own config tells its shape
            stored = _imported_adapter_shape(
                self.settings.resolved_storage_dir / source.storage_key
            )
        adapter = {key: stored.get(key, EXTENSION_DEFAULTS[key]) for key in ADAPTER_KEYS}
        shape = (
            f"rank {adapter['lora_rank']}, alpha {adapter['lora_alpha']} and dropout "
            f"{adapter['lora_dropout']}"
        )
        notes = [
            ("info", f"Continuing the LoRA adapter of {source.id} ({shape}) on {start.base_model}")
        ]
        ignored = [
            f"{key} {hyperparameters[key]}"
            for key in ADAPTER_KEYS
            if key in checked.given and hyperparameters[key] != adapter[key]
        ]
        if ignored:
            notes.append(
                (
                    "warn",
                    f"{' and '.join(ignored)} do not apply: a continued adapter keeps its own "
                    f"{shape}",
                )
            )
        hyperparameters.update(adapter)
        return notes

    def _check_running_quota(self, project: Project) -> None:
        limit = self.settings.max_running_jobs_per_project
        if not limit:
            return
        hold_project(self.session, project.id)  # racing creates count one after the other
        active = self.session.scalar(
            select(func.count())
            .select_from(FineTuningJob)
            .where(
                FineTuningJob.project_id == project.id,
                # Paused jobs hold no worker: they do not count.
                FineTuningJob.status.in_([status.value for status in ACTIVE]),
            )
        )
        if (active or 0) >= limit:
            raise RateLimited(
                f"This project already has {active} fine-tuning jobs validating, queued or "
                f"running (the limit is {limit}). Wait for one to finish or cancel one.",
                code="quota_exceeded",
            )

    def _check_file(self, project: Project, file_id: str, param: str, method: str) -> None:
        row = usable_file(
            self.files,
            project.id,
            file_id,
            param=param,
            purpose=FINE_TUNE_PURPOSE,
            use="fine-tuning",
        )
        trained = METHOD_FORMATS[method]
        if row.data_format is not None and row.data_format not in trained:
            formats = " or ".join(sorted(trained))
            raise InvalidRequest(
                f"Invalid {param}: {file_id}. The file holds {row.data_format} examples, but the "
                f"{method} method trains on {formats} examples.",
                param=param,
                code="invalid_file_format",
            )

    def _enqueue_after_commit(self, job_id: str) -> None:
        queue = self.queue
        send_after_commit(
            self.session,
            job_id,
            lambda: queue.enqueue(job_id),
            lambda session: FineTuningRepository(session).mark_enqueued(job_id, utcnow()),
        )

    # Read ---------------------------------------------------------------------------------

    def get(self, project: Project, job_id: str, *, param: str = "id") -> FineTuningJob:
        job = self.jobs.get_job(job_id, project_id=project.id)
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param=param)
        return job

    def list(
        self,
        project: Project,
        *,
        after: str | None,
        limit: int,
        metadata: Mapping[str, str] | None = None,
        metadata_is_null: bool = False,
    ) -> Page[FineTuningJob]:
        cursor = self.get(project, after, param="after") if after else None
        return self.jobs.list_jobs(
            project.id,
            metadata=metadata,
            metadata_is_null=metadata_is_null,
            after=cursor,
            limit=limit,
        )

    def comparison_runs(self, jobs: Iterable[FineTuningJob]) -> dict[str, builtins.list[EvalRun]]:
        """The runs of each job's comparison eval (`job.eval_id`), in one query."""
        return EvalRepository(self.session).runs_of_evals(
            job.eval_id for job in jobs if job.eval_id is not None
        )

    def list_events(
        self, project: Project, job_id: str, *, after: str | None, limit: int
    ) -> Page[FineTuningEvent]:
        job = self.get(project, job_id)
        cursor = None
        if after:
            cursor = self.jobs.get_event(job.id, after)
            if cursor is None:
                raise NotFound(f"No such fine-tuning event: {after}", param="after")
        return self.jobs.list_events(job.id, after=cursor, limit=limit)

    def list_checkpoints(
        self, project: Project, job_id: str, *, after: str | None, limit: int
    ) -> Page[FineTuningCheckpoint]:
        job = self.get(project, job_id)
        cursor = None
        if after:
            cursor = self.jobs.get_checkpoint(job.id, after)
            if cursor is None:
                raise NotFound(f"No such fine-tuning checkpoint: {after}", param="after")
        return self.jobs.list_checkpoints(job.id, after=cursor, limit=limit)

    # Status changes -----------------------------------------------------------------------

    def cancel(self, project: Project, job_id: str) -> FineTuningJob:
        job = self.get(project, job_id)
        self.lifecycle.cancel(job)
        return job

    def pause(self, project: Project, job_id: str) -> FineTuningJob:
        job = self.get(project, job_id)
        self.lifecycle.pause(job)
        return job

    def resume(self, project: Project, job_id: str) -> FineTuningJob:
        job = self.get(project, job_id)
        self._check_running_quota(project)
        self.lifecycle.resume(job)
        self._enqueue_after_commit(job.id)
        return job


def auto_eval_setting(given: Any, validation_file: str | None, most: int) -> dict[str, Any]:
    """A job's `auto_eval` as stored: ``{"enabled", "max_items"}``.

    On by default when the job has a validation file (there is nothing to compare on without
    one); ``false`` or ``{"enabled": false}`` opts out; ``max_items`` caps the examples
    evaluated, at most the server's ``TUNA_JOB_EVAL_MAX_ITEMS``.
    """
    param = "auto_eval"
    enabled, max_items = True, most
    if isinstance(given, bool):
        enabled = given
    elif isinstance(given, dict):
        _no_unknown_keys(given, {"enabled", "max_items"}, param)
        enabled = given.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidRequest(
                f"Invalid type for '{param}.enabled': expected a boolean.", param=f"{param}.enabled"
            )
        count = given.get("max_items", most)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
            raise InvalidRequest(
                f"Invalid value for '{param}.max_items': expected an integer from 1 to {most}.",
                param=f"{param}.max_items",
            )
        max_items = count
    elif given is not None:
        raise InvalidRequest(
            f"Invalid type for '{param}': expected a boolean or an object with 'enabled' and "
            "'max_items'.",
            param=param,
        )
    if given is not None and enabled and validation_file is None:
        raise InvalidRequest(
            f"Invalid '{param}': the automatic evaluation runs on the validation set, and this "
            "job has no validation_file.",
            param=param,
        )
    return {"enabled": enabled and validation_file is not None, "max_items": max_items}


def validate_create(request: CreateFineTuningJobRequest) -> ValidatedJob:
    """Every check on a create request that needs no database; raises `InvalidRequest`."""
    suffix = request.suffix
    if suffix is not None and not SUFFIX_PATTERN.fullmatch(suffix):
        raise InvalidRequest(
            "Invalid value for 'suffix': it must be 1 to 64 characters of letters, digits, "
            "'-' and '_'.",
            param="suffix",
        )
    seed = request.seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(
            f"Invalid value for 'seed': it must be between 0 and {MAX_SEED}, got {seed}.",
            param="seed",
        )
    method, hyperparameters, given = _hyperparameters(request.method, request.hyperparameters)
    return ValidatedJob(
        suffix=suffix,
        seed=seed,
        hyperparameters=hyperparameters,
        method=method,
        metadata=check_metadata(request.metadata),
        integrations=_integrations(request.integrations),
        given=given,
    )


def _hyperparameters(
    method: dict[str, Any] | None, legacy: dict[str, Any] | None
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(method type, stored hyperparameters, where each given key was set).

    OpenAI's form: `{"type": T, T: {"hyperparameters": {...}}}`; the object of another type
    (`method.dpo` beside type `supervised`) is refused rather than ignored. The deprecated
    top-level `hyperparameters` takes the same keys as the method.
    """
    kind = "supervised"
    method_values: dict[str, Any] = {}
    if method is not None:
        kind = method.get("type")  # type: ignore[assignment]
        if kind is None:
            raise InvalidRequest("Missing required parameter: 'method.type'.", param="method.type")
        if kind not in METHOD_TYPES:
            raise InvalidRequest(
                f"Invalid value for 'method.type': expected one of {', '.join(METHOD_TYPES)}, "
                f"got {kind!r}.",
                param="method.type",
            )
        if kind not in SUPPORTED_METHODS:
            raise InvalidRequest(
                f"The fine-tuning method '{kind}' is not supported yet; use "
                f"{' or '.join(repr(m) for m in SUPPORTED_METHODS)}.",
                param="method.type",
                code="unsupported_method",
            )
        for key in method:
            if key in METHOD_TYPES and key != kind:
                raise InvalidRequest(
                    f"Invalid parameter 'method.{key}': the method type is '{kind}', so its "
                    f"hyperparameters go under 'method.{kind}'.",
                    param=f"method.{key}",
                )
        _no_unknown_keys(method, {"type", kind}, "method")
        body = method.get(kind)
        if body is not None:
            if not isinstance(body, dict):
                raise InvalidRequest(
                    f"Invalid value for 'method.{kind}': expected an object.",
                    param=f"method.{kind}",
                )
            _no_unknown_keys(body, {"hyperparameters"}, f"method.{kind}")
            method_values = hp.parse(
                body.get("hyperparameters"), f"method.{kind}.hyperparameters", kind
            )
    prefix = f"method.{kind}.hyperparameters"
    legacy_values = hp.parse(legacy, "hyperparameters", kind)
    given = {key: f"hyperparameters.{key}" for key in legacy_values}
    given |= {key: f"{prefix}.{key}" for key in method_values}
    merged = hp.merge(method_values, legacy_values, method_prefix=prefix, method=kind)
    return kind, merged, given


def _no_unknown_keys(value: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in value:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{prefix}.{key}'.", param=f"{prefix}.{key}")


def _integrations(integrations: list[Any] | None) -> list[Any] | None:
    """Checked (`tuna_core.integrations`: the supported types and their fields), stored and
    shown back as given; the worker logs the job's run to each (`worker/integrations/`)."""
    try:
        return check_integrations(integrations)
    except IntegrationConfigError as exc:
        raise InvalidRequest(
            f"Invalid value for '{exc.param}': {exc.message}.", param=exc.param
        ) from None


def parse_metadata_filter(query: Iterable[tuple[str, str]]) -> tuple[dict[str, str], bool]:
    """`metadata[k]=v` pairs (deepObject style, as the SDK sends them) and `metadata=null`.

    Returns (pairs, is_null). The two forms select different things and may not be combined.
    """
    pairs: dict[str, str] = {}
    is_null = False
    for name, value in query:
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata[") : -1]] = value
        elif name == "metadata":
            if value != "null":
                raise InvalidRequest(
                    "Invalid value for 'metadata': use metadata[key]=value, or metadata=null.",
                    param="metadata",
                )
            is_null = True
    if pairs and is_null:
        raise InvalidRequest(
            "Do not combine metadata=null with metadata[key]=value filters.", param="metadata"
        )
    return pairs, is_null


def _imported_adapter_shape(folder: Path) -> dict[str, Any]:
    """rank, alpha and dropout of an imported peft adapter, named as our hyperparameters."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}
    shape = {"lora_rank": config.get("r"), "lora_alpha": config.get("lora_alpha")}
    shape["lora_dropout"] = config.get("lora_dropout")
    return {key: value for key, value in shape.items() if value is not None}
