"""Settings: one class, read from the environment with the prefix TUNA_.

Every default is the embedded one (SQLite, local files, a broker with no server) so that
`tuna serve` needs nothing else; production overrides through env vars.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuna_core.base_models import check_hub_id, hub_model_folders
from tuna_core.devices import Device
from tuna_core.hyperparameters import Precision


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNA_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite under data_dir"
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker; default: a folder-based broker under data_dir"
    )
    training_queue: str = Field(
        default="training", description="Broker queue the API sends jobs to and workers consume"
    )
    api_key: str | None = Field(
        default=None, description="If set, a valid key for the default project"
    )
    default_project: str = "default"
    max_upload_bytes: int = 512 * 1024 * 1024
    max_reported_line_errors: int = 20
    storage_dir: Path | None = None
    model_cache_dir: Path | None = None
    local_models: dict[str, Path] = Field(
        default_factory=dict, description="Extra base models: name -> local folder (JSON)"
    )
    hub_models: list[str] = Field(
        default_factory=list,
        description="Extra base models from the Hugging Face hub (JSON list of ids, e.g. "
        '["meta-llama/Llama-3.2-1B-Instruct"]), downloaded once into the model cache',
    )
    job_lease_seconds: float = Field(
        default=60.0,
        description="A running job whose worker has not renewed its lease for this long is "
        "returned to the queue",
    )
    training_activation_memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="Memory a training step's activations may take; unset: what the device "
        "has free when the job starts. Larger batches are split, longer examples checkpointed",
    )
    training_precision: Precision = Field(
        default="auto",
        description="Matmul precision of training steps over float32 weights; auto: bf16 "
        "where the GPU or CPU multiplies bf16 natively, float32 elsewhere",
    )
    training_processes: int = Field(
        default=1,
        ge=1,
        description="Processes a worker trains each job on (one per GPU it owns; data "
        "parallel: DDP for LoRA, FSDP2 for full fine-tuning). See docs/scaling.md",
    )
    training_nodes: int = Field(
        default=1,
        ge=1,
        description="Machines each job trains on: this worker's and TUNA_TRAINING_NODES - 1 "
        "agents (python -m worker.training.agent) that join at TUNA_TRAINING_RENDEZVOUS",
    )
    training_rendezvous: str | None = Field(
        default=None,
        description="host:port of this worker that the other machines' agents reach, when "
        "TUNA_TRAINING_NODES > 1",
    )
    max_job_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts a job gets when one of its training processes dies; then it fails",
    )
    job_eval_max_items: int = Field(
        default=100,
        ge=1,
        description="Validation examples a succeeded job's automatic comparison (base vs "
        "checkpoints vs final) evaluates at most; a job's auto_eval.max_items may ask for fewer",
    )
    # Quotas (see docs/reliability.md); None or 0 means unlimited, the default.
    max_running_jobs_per_project: int | None = Field(
        default=None,
        description="Jobs a project may have in validating_files/queued/running at once; "
        "creating one more answers 429 (code quota_exceeded)",
    )
    max_active_eval_runs_per_project: int | None = Field(
        default=None,
        description="Eval runs a project may have queued or in progress at once; creating one "
        "more answers 429 (code quota_exceeded). A job's automatic comparison is not counted",
    )
    max_storage_bytes_per_project: int | None = Field(
        default=None,
        description="Total bytes of a project's files; an upload beyond it answers 400 "
        "(code storage_quota_exceeded) and stores nothing",
    )
    requests_per_minute_per_key: int | None = Field(
        default=None,
        description="Requests one API key may make per minute; beyond it 429 with retry-after",
    )
    rate_limit_url: str | None = Field(
        default=None,
        description="Redis URL where every API process counts requests per key together; "
        "default: the broker when it is Redis, else each process counts on its own",
    )
    enable_test_models: bool = Field(
        default=False, description="Expose the tiny random test model as a base model"
    )

    # Exports and imports of fine-tuned models (see docs/export.md).
    import_roots: list[Path] = Field(
        default_factory=list,
        description="Server folders (JSON list) whose model folders an API caller may import "
        "by path; empty: only uploaded archives can be imported",
    )
    max_import_bytes: int = Field(
        default=64 * 1024**3,
        gt=0,
        description="Largest unpacked size of an imported model archive",
    )

    # Webhooks (see docs/webhooks.md).
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long one webhook POST may take"
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of one delivery before it is marked failed"
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Wait after a delivery's first failed attempt; doubled after each next "
        "one, at most webhook_retry_max_seconds",
    )
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often each worker looks for due webhook deliveries (besides the "
        "message sent after each event)",
    )
    webhook_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Delivered and failed webhook deliveries older than this are deleted by "
        "the workers (at most hourly), with the events that have no delivery left",
    )
    webhook_secret_grace_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="After rotate_secret, how long deliveries are also signed with the old "
        "secret (a second signature); 0: only the new one",
    )

    # A job's integrations (see docs/fine-tuning.md#integrations): where its runs are logged.
    wandb_mode: Literal["offline", "online", "disabled"] = Field(
        default="offline",
        description="Weights & Biases runs: offline (written under wandb_dir, nothing leaves "
        "the machine; `wandb sync` uploads them), online (needs WANDB_API_KEY), or disabled",
    )
    wandb_dir: Path | None = Field(
        default=None, description="Where W&B keeps its run folders; default: data_dir/wandb"
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI of every job's mlflow integration (a server's http "
        "URL, a database URL); default: an SQLite store under data_dir/mlflow",
    )

    # Inference (see docs/inference.md).
    inference_backend: Literal["local", "upstream"] = "local"
    inference_device: Device = "auto"
    adapter_cache_bytes: int = Field(
        default=1 << 30, description="LRU budget for loaded adapters and full fine-tunes"
    )
    inference_queue_size: int = Field(
        default=64, description="Requests waiting for generation; beyond it the API answers 429"
    )
    inference_max_batch_size: int = Field(
        default=64, ge=1, description="Sequences the local engine decodes together (batch rows)"
    )
    inference_upstream_url: str | None = Field(
        default=None, description="OpenAI-compatible server (vLLM --enable-lora) to serve from"
    )
    inference_upstream_api_key: str | None = None
    inference_upstream_models: dict[str, str] = Field(
        default_factory=dict, description="Tuna model name or ft: id -> upstream model name"
    )
    inference_upstream_adapter_root: Path | None = Field(
        default=None, description="The storage root as the upstream server sees it"
    )
    inference_upstream_timeout: float = 600.0

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tuna.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "files").resolve()

    @property
    def resolved_model_cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").resolve()

    @property
    def base_model_folders(self) -> dict[str, Path]:
        """The configured base models as `tuna_core.base_models` takes them: local folders and
        hub models (mapped to their folder in the model cache; a local name wins)."""
        return hub_model_folders(self.hub_models, self.resolved_model_cache_dir) | dict(
            self.local_models
        )

    @model_validator(mode="after")
    def _rendezvous_for_nodes(self) -> Settings:
        if self.training_nodes > 1 and not self.training_rendezvous:
            raise ValueError(
                "TUNA_TRAINING_NODES > 1 needs TUNA_TRAINING_RENDEZVOUS (host:port of this "
                "worker, reachable from the other machines)"
            )
        return self

    @field_validator("hub_models")
    @classmethod
    def _hub_ids(cls, value: list[str]) -> list[str]:
        return [check_hub_id(repo_id) for repo_id in value]

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
