"""Wire shapes of the fine-tuning API, field for field as OpenAI's (`openai.types.fine_tuning`).

Response models are built from ORM rows by `of(...)`; the create request is only typed loosely
here (nested objects stay plain dicts) because `service.validate_create` checks the values and
names the exact `param` of a bad one, which pydantic's union error locations cannot do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.evals import job_comparison
from app.fine_tuning import hyperparameters as hp
from app.orm import EvalRun, FineTuningCheckpoint, FineTuningEvent, FineTuningJob
from app.orm.base import unix
from app.wire import OmitWhenNone
from tuna_core.hyperparameters import STANDARD_KEYS, Quantization, TrainingType

Status = Literal[
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"
]
AutoInt = int | Literal["auto"]
AutoFloat = float | Literal["auto"]


class CreateFineTuningJobRequest(BaseModel):
    """`POST /v1/fine_tuning/jobs`; unknown top-level keys are refused, like OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    method: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, Any] | None = None
    # Checked by `service.auto_eval_setting`.
    auto_eval: bool | dict[str, Any] | None = Field(
        default=None,
        description="Tuna: compare the starting model, checkpoints and final model on the "
        "validation set when the job succeeds (default: on with a validation_file); false, or "
        '{"enabled": bool, "max_items": int}',
    )


class JobError(BaseModel):
    code: str | None
    message: str | None
    param: str | None


class Hyperparameters(BaseModel):
    batch_size: AutoInt
    learning_rate_multiplier: AutoFloat
    n_epochs: AutoInt


class SupervisedHyperparameters(Hyperparameters):
    """OpenAI's three plus Tuna's extensions (ignored by OpenAI's SDK, shown to every client)."""

    training_type: TrainingType
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    quantization: Quantization


class DpoHyperparameters(SupervisedHyperparameters):
    """OpenAI's DPO hyperparameters (its three and `beta`) plus Tuna's extensions."""

    beta: AutoFloat


class SupervisedMethod(BaseModel):
    hyperparameters: SupervisedHyperparameters


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters


class Method(OmitWhenNone):
    """`{"type": T, T: {"hyperparameters": {...}}}`: only the job's own method's object (OpenAI's
    schema types the others as objects, so they are left out rather than null)."""

    omit_when_none = frozenset({"supervised", "dpo"})

    type: Literal["supervised", "dpo"] = "supervised"
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @classmethod
    def of(cls, method: str, values: dict[str, Any]) -> Method:
        if method == "dpo":
            return cls(type="dpo", dpo=DpoMethod(hyperparameters=DpoHyperparameters(**values)))
        return cls(supervised=SupervisedMethod(hyperparameters=SupervisedHyperparameters(**values)))


class AutoEval(BaseModel):
    """Whether a job compares its models on its validation set when it succeeds, on how many."""

    enabled: bool
    max_items: int


class JobEvalRow(BaseModel):
    """One model of a job's comparison; scores are null until its run has completed."""

    label: str  # "base", "step 10", "final"
    role: Literal["base", "checkpoint", "final"]
    model: str
    step: int
    run_id: str
    status: str
    exact_match: float | None  # share of answers equal to the expected one
    similarity: float | None  # mean fuzzy-match score against the expected answer, 0..1
    valid_loss: float | None
    errored: int | None  # items the model could not answer (prompt too long, ...)
    best: bool


class JobEval(BaseModel):
    """Tuna's extension on a succeeded job: its models side by side (`app.evals.job_comparison`);
    the eval itself is `GET /v1/evals/{id}`."""

    id: str
    status: str
    items: int
    best_model: str | None
    rows: list[JobEvalRow]


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    estimated_finish: int | None
    # null while there is no error: OpenAI's spec makes `error` nullable with `code` and
    # `message` required strings, so an object of nulls would not match it.
    error: JobError | None
    fine_tuned_model: str | None
    hyperparameters: Hyperparameters
    method: Method
    model: str
    organization_id: str
    result_files: list[str]
    status: Status
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    seed: int
    integrations: list[Any] | None
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    # Tuna's extensions.
    auto_eval: AutoEval | None = Field(
        default=None, description="Tuna: whether the job compares its models when it succeeds"
    )
    eval: JobEval | None = Field(
        default=None,
        description="Tuna: the comparison table (base, checkpoints, final) once the job has "
        "succeeded with a validation file; null otherwise",
    )

    @classmethod
    def of(
        cls, job: FineTuningJob, organization_id: str, eval_runs: Sequence[EvalRun] = ()
    ) -> FineTuningJobObject:
        """``eval_runs``: the runs of the job's comparison eval, if it has one."""
        values = hp.shown(job.hyperparameters, job.resolved_hyperparameters, job.method_type)
        error = None
        if job.error_code or job.error_message:
            error = JobError(code=job.error_code, message=job.error_message, param=job.error_param)
        return cls(
            id=job.id,
            created_at=unix(job.created_at) or 0,
            finished_at=unix(job.finished_at),
            estimated_finish=unix(job.estimated_finish),
            error=error,
            fine_tuned_model=job.fine_tuned_model,
            hyperparameters=Hyperparameters(**{k: values[k] for k in STANDARD_KEYS}),
            method=Method.of(job.method_type, values),
            model=job.model,
            organization_id=organization_id,
            result_files=list(job.result_files or []),
            status=job.status,  # type: ignore[arg-type]
            trained_tokens=job.trained_tokens,
            training_file=job.training_file,
            validation_file=job.validation_file,
            seed=job.seed,
            integrations=job.integrations,
            metadata=job.metadata_,
            user_provided_suffix=job.suffix,
            auto_eval=AutoEval(**job.auto_eval) if job.auto_eval else None,
            eval=_job_eval(job, eval_runs),
        )


def _job_eval(job: FineTuningJob, runs: Sequence[EvalRun]) -> JobEval | None:
    if job.eval_id is None:
        return None
    shown = job_comparison.table(job.eval_id, runs)
    return JobEval.model_validate(shown) if shown is not None else None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobObject]
    has_more: bool


class FineTuningJobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]  # an object in OpenAI's schema, never null: `{}` when there is none
    type: Literal["message", "metrics"]

    @classmethod
    def of(cls, event: FineTuningEvent) -> FineTuningJobEventObject:
        return cls(
            id=event.id,
            created_at=unix(event.created_at) or 0,
            level=event.level,  # type: ignore[arg-type]
            message=event.message,
            data=event.data or {},
            type=event.type,  # type: ignore[arg-type]
        )


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEventObject]
    has_more: bool


# OpenAI's checkpoint metrics; the engine's extras (learning rate, speed) stay in events.
CHECKPOINT_METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


class CheckpointMetrics(OmitWhenNone):
    # Numbers, never null, in OpenAI's schema: a metric not measured (no validation file, no
    # full validation pass) is left out.
    omit_when_none = frozenset({"step", *CHECKPOINT_METRICS})

    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int

    @classmethod
    def of(cls, checkpoint: FineTuningCheckpoint) -> FineTuningJobCheckpointObject:
        known = CheckpointMetrics.model_fields
        metrics = {k: v for k, v in (checkpoint.metrics or {}).items() if k in known}
        return cls(
            id=checkpoint.id,
            created_at=unix(checkpoint.created_at) or 0,
            fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
            fine_tuning_job_id=checkpoint.job_id,
            metrics=CheckpointMetrics(**metrics),
            step_number=checkpoint.step_number,
        )


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpointObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
