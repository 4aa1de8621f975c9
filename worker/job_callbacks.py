"""The engine's callbacks, turned into a job's rows: events, metrics, checkpoints, stop requests.

The engine (`worker.training`) knows nothing of jobs; it calls these between steps. Each call is
one short transaction of its own, so the API shows training live.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.db import Database
from app.exports.repository import ExportRepository
from app.files.storage import LocalStorage
from app.fine_tuning.repository import FineTuningRepository
from app.fine_tuning.schemas import CHECKPOINT_METRICS
from app.fine_tuning.state import JobStatus
from app.orm.base import utcnow
from app.webhooks import events as webhook_events
from app.webhooks.outbox import emit
from tuna_core.model_ids import checkpoint_model_id
from worker.integrations import JobIntegrations
from worker.training import ResolvedHyperparameters
from worker.training.callbacks import StopRequest

STOP_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class JobPlan:
    """What a run needs from the job row, read once so training holds no session open."""

    job_id: str
    worker_id: str
    attempt: int
    base_model: str
    model_id: str
    training_type: str
    output_dir: Path
    method: str = "supervised"


class JobCallbacks:
    """`worker.training.TrainingCallbacks` for one attempt of one job."""

    def __init__(
        self,
        database: Database,
        storage: LocalStorage,
        plan: JobPlan,
        integrations: JobIntegrations | None = None,
    ) -> None:
        self.db = database
        self.storage = storage
        self.plan = plan
        self.job_id = plan.job_id
        # W&B, MLflow (worker/integrations): they contain their own failures.
        self.integrations = integrations or JobIntegrations.none(database, plan.job_id)
        self._last_poll = 0.0
        self._ownership: tuple[str, str | None, int] | None = (
            JobStatus.RUNNING,
            plan.worker_id,
            plan.attempt,
        )
        self._started = time.monotonic()
        self._first_step: int | None = None
        with self.db.session_scope() as session:
            self._recorded_up_to = FineTuningRepository(session).last_metrics_step(self.job_id)

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        if data and data.get("resumed"):  # the engine does not know the attempt; we do
            message = f"Resumed from step {data['step']} (attempt {self.plan.attempt})"
            data = None
        with self.db.session_scope() as session:
            FineTuningRepository(session).add_event(self.job_id, message, level=level, data=data)

    def on_hyperparameters(self, resolved: ResolvedHyperparameters) -> None:
        with self.db.session_scope() as session:
            job = FineTuningRepository(session).reload_job(self.job_id)
            if job is not None:
                job.resolved_hyperparameters = resolved.to_dict()
        self.integrations.hyperparameters(resolved.to_dict())

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        if self._first_step is None:
            self._first_step, self._started = step, time.monotonic()
        if step <= self._recorded_up_to:
            return  # replayed after a resume: each step appears once in the metrics
        data: dict[str, Any] = {"step": step, "total_steps": total_steps}
        data.update({k: float(v) for k, v in metrics.items() if v is not None})
        done = step - self._first_step + 1
        seconds_per_step = (time.monotonic() - self._started) / max(done, 1)
        with self.db.session_scope() as session:
            jobs = FineTuningRepository(session)
            jobs.add_metrics_event(
                self.job_id, step_message(step, total_steps, data, self.plan.method), data
            )
            job = jobs.reload_job(self.job_id)
            if job is not None:
                if "trained_tokens" in metrics:
                    job.trained_tokens = int(metrics["trained_tokens"])
                job.estimated_finish = utcnow() + timedelta(
                    seconds=seconds_per_step * max(total_steps - step, 0)
                )
        self._recorded_up_to = step
        self.integrations.metrics(step, total_steps, data)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        model_id = checkpoint_model_id(self.plan.model_id, step)
        with self.db.session_scope() as session:
            jobs = FineTuningRepository(session)
            job = jobs.reload_job(self.job_id)
            assert job is not None
            jobs.record_checkpoint(
                job,
                step=step,
                model_id=model_id,
                storage_key=self.storage.key_of(path),
                metrics={"step": step, **_checkpoint_metrics(metrics)},
                training_type=self.plan.training_type,
                base_model=self.plan.base_model,
            )
            jobs.add_event(self.job_id, f"Checkpoint created at step {step}: {model_id}")
            emit(session, job.project_id, webhook_events.JOB_CHECKPOINT_CREATED, self.job_id)
        self.integrations.checkpoint(step, model_id, metrics)

    def on_checkpoint_deleted(self, step: int, path: Path) -> None:
        """A pruned checkpoint: its `ft:` model goes, and with it the downloads built of it
        (their rows by the foreign key; their folders here)."""
        model_id = checkpoint_model_id(self.plan.model_id, step)
        with self.db.session_scope() as session:
            built = ExportRepository(session).storage_keys(model_id)
            FineTuningRepository(session).remove_checkpoint(self.job_id, step)
        for key in built:
            shutil.rmtree(self.storage.path(key), ignore_errors=True)

    def should_stop(self) -> StopRequest | None:
        """Polled between steps: "cancel" or "pause" when the API asked, and "cancel" when this
        attempt no longer owns the job (it was requeued and claimed by another attempt)."""
        now = time.monotonic()
        if now - self._last_poll >= STOP_POLL_SECONDS:
            self._last_poll = now
            with self.db.session_scope() as session:
                self._ownership = FineTuningRepository(session).ownership(self.job_id)
        if self._ownership is None:
            return "cancel"  # the job row is gone
        status, worker_id, attempt = self._ownership
        if worker_id != self.plan.worker_id or attempt != self.plan.attempt:
            return "cancel"  # never write a pause checkpoint for a job another attempt owns
        if status == JobStatus.PAUSED:
            return "pause"
        if status != JobStatus.RUNNING:
            return "cancel"
        return None


# The figures a step's event message names, per method: (metrics key, words). Every metric is in
# the event's data; the message keeps to what a person follows in a log.
_STEP_MESSAGE: dict[str, tuple[tuple[str, str], ...]] = {
    "supervised": (("train_loss", "training loss"), ("valid_loss", "validation loss")),
    "dpo": (
        ("train_loss", "training loss"),
        ("train_reward_accuracy", "reward accuracy"),
        ("valid_loss", "validation loss"),
        ("valid_reward_accuracy", "validation reward accuracy"),
    ),
}


def step_message(step: int, total_steps: int, data: dict[str, Any], method: str) -> str:
    """The event's message, e.g. `Step 3/12: training loss=0.6931, reward accuracy=0.50`
    (losses to 4 places, accuracies to 2)."""
    parts = [
        f"{words}={data[key]:.{2 if key.endswith('accuracy') else 4}f}"
        for key, words in _STEP_MESSAGE.get(method, _STEP_MESSAGE["supervised"])
        if key in data
    ]
    return f"Step {step}/{total_steps}: {', '.join(parts)}"


def _checkpoint_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in CHECKPOINT_METRICS if metrics.get(k) is not None}
