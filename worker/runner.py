"""One job, start to finish: validate the files, claim the job, train, publish the model.

The engine (`worker.training`) knows nothing of jobs; this module turns its callbacks into
events, checkpoints and model rows, and its exceptions into job statuses. A heartbeat thread
keeps the job's lease fresh while training runs, so a worker that dies (SIGKILL, OOM, node
reboot) is noticed within a lease period and its job is put back in the queue.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func

from app.config import Settings
from app.db import Database
from app.files.service import FileService
from app.files.storage import LocalStorage
from app.fine_tuning.state import JobStatus, transition
from app.orm import FineTuningJob
from app.orm.base import utcnow
from worker.store import JobStore

logger = logging.getLogger("tuna.worker")

STOP_POLL_SECONDS = 1.0
MIN_EXAMPLES = 10
_CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class JobPlan:
    """What a run needs from the job row, read once so training holds no session open."""

    job_id: str
    project_name: str
    base_model: str
    model_id: str
    training_type: str
    output_dir: Path
    attempt: int


def fine_tuned_model_id(base: str, project: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{org}:{suffix}:{8 chars}`; derived from the job id so a resumed run agrees."""
    return f"ft:{base}:{project}:{suffix or ''}:{job_id[-8:]}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return None
    steps = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _CHECKPOINT_DIR.match(path.name)) and (path / "trainer_state.pt").is_file()
    ]
    return max(steps)[1] if steps else None


def _auto(value: Any) -> Any:
    return None if value in (None, "auto") else value


class JobRunner:
    def __init__(
        self, *, settings: Settings, database: Database, storage: LocalStorage, worker_id: str
    ) -> None:
        self.settings = settings
        self.db = database
        self.storage = storage
        self.worker_id = worker_id
        self.lease = timedelta(seconds=settings.job_lease_seconds)
        self.heartbeat_seconds = settings.job_lease_seconds / 4

    # -- the flow -------------------------------------------------------------------------

    def run(self, job_id: str) -> None:
        tokenized: dict[Path, Any] = {}
        if not self._validate_files(job_id, tokenized):
            return
        plan = self._claim(job_id)
        if plan is None:
            return  # cancelled, paused, finished, or another worker has it: a harmless repeat
        self._train(job_id, plan, tokenized)

    def _validate_files(self, job_id: str, tokenized: dict[Path, Any]) -> bool:
        """validating_files -> queued (or failed); True when the job is ready to be claimed.

        The files' tokenized examples are left in ``tokenized`` for training to start from.
        """
        with self.db.session_scope() as session:
            job = JobStore(session).job(job_id)
            if job is None:
                return False
            if job.status != JobStatus.VALIDATING_FILES:
                return job.status == JobStatus.QUEUED
            files = self._file_paths(session, job)
            base_model = job.model
        try:
            failure = self._check_data(base_model, files, tokenized)
        except Exception as exc:
            logger.exception("validating files of %s failed", job_id)
            failure = ("validation_failed", f"Could not validate the files: {exc}"[:1000], None)
        with self.db.session_scope() as session:
            store = JobStore(session)
            if failure is not None:
                code, message, param = failure
                if transition(
                    session,
                    job_id,
                    JobStatus.FAILED,
                    only_from={JobStatus.VALIDATING_FILES},
                    error_code=code,
                    error_message=message,
                    error_param=param,
                    finished_at=utcnow(),
                ):
                    store.add_event(job_id, message, level="error")
                return False
            if not transition(
                session, job_id, JobStatus.QUEUED, only_from={JobStatus.VALIDATING_FILES}
            ):
                return False
            store.add_event(job_id, "Files validated, moving job to queued state")
            return True

    def _file_paths(self, session: Any, job: FineTuningJob) -> dict[str, Path | None]:
        store = JobStore(session)
        paths: dict[str, Path | None] = {"training_file": None, "validation_file": None}
        for param in paths:
            file_id = getattr(job, param)
            if file_id:
                row = store.file(job.project_id, file_id)
                paths[param] = self.storage.path(row.storage_key) if row else None
        return paths

    def _check_data(
        self, base_model: str, files: dict[str, Path | None], tokenized: dict[Path, Any]
    ) -> tuple[str, str, str | None] | None:
        """Checks that need the tokenizer; (code, message, param) of the first failure.

        Files that pass are left tokenized in ``tokenized``.
        """
        from worker.training import validate_examples
        from worker.training.base_models import (
            get_base_model_info,
            load_tokenizer,
            resolve_base_model,
        )

        model_dir = resolve_base_model(
            base_model, self.settings.resolved_model_cache_dir, self.settings.local_models
        )
        tokenizer = load_tokenizer(model_dir)
        context = get_base_model_info(base_model, self.settings.local_models).context_length
        for param in ("training_file", "validation_file"):
            path = files[param]
            if param == "validation_file" and path is None:
                continue
            if path is None or not path.is_file():
                return "invalid_training_file", f"The {param.replace('_', ' ')} was deleted.", param
            report = validate_examples(path, tokenizer, context, keep_examples=True)
            if report.examples is not None:
                tokenized[path] = report.examples
            kind = "Training" if param == "training_file" else "Validation"
            if param == "training_file" and report.n_examples < MIN_EXAMPLES:
                return (
                    "invalid_n_examples",
                    f"{kind} file has {report.n_examples} example(s), but must have at least "
                    f"{MIN_EXAMPLES} examples",
                    param,
                )
            if report.problems:
                first = report.problems[0]
                more = len(report.problems) - 1
                tail = f" ({more} more example(s) have problems)" if more else ""
                return (
                    "invalid_training_file"
                    if param == "training_file"
                    else "invalid_validation_file",
                    f"Invalid file format. Example {first.example_number}: {first.message}{tail}",
                    param,
                )
        return None

    def _claim(self, job_id: str) -> JobPlan | None:
        now = utcnow()
        with self.db.session_scope() as session:
            store = JobStore(session)
            moved = transition(
                session,
                job_id,
                JobStatus.RUNNING,
                only_from={JobStatus.QUEUED},
                attempt=FineTuningJob.attempt + 1,
                worker_id=self.worker_id,
                lease_expires_at=now + self.lease,
                started_at=func.coalesce(FineTuningJob.started_at, now),
            )
            if not moved:
                return None
            job = store.job(job_id)
            assert job is not None
            from worker.training.base_models import get_base_model_info

            canonical = get_base_model_info(job.model, self.settings.local_models).name
            project = store.project(job.project_id)
            plan = JobPlan(
                job_id=job_id,
                project_name=project.name,
                base_model=canonical,
                model_id=fine_tuned_model_id(canonical, project.name, job.suffix, job_id),
                training_type=str(job.hyperparameters.get("training_type", "lora")),
                output_dir=self.storage.root / "jobs" / job_id,
                attempt=job.attempt,
            )
            if latest_checkpoint(plan.output_dir) is None:
                store.add_event(job_id, "Fine-tuning job started")
            # else the engine reports the step it resumed from (`_JobCallbacks.on_event`)
            return plan

    def _train(self, job_id: str, plan: JobPlan, tokenized: dict[Path, Any]) -> None:
        from worker.training import TrainingCancelled, TrainingPaused, train

        heartbeat = _Heartbeat(self, job_id)
        heartbeat.start()
        try:
            config = self._config(job_id, plan)
            result = train(config, _JobCallbacks(self, plan), tokenized)
        except TrainingCancelled:
            return
        except TrainingPaused:
            with self.db.session_scope() as session:
                JobStore(session).add_event(job_id, "Training paused; resume continues from here")
            return
        except BaseException as exc:  # every failure must surface on the job
            self._fail(job_id, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            heartbeat.stop()
        self._succeed(job_id, plan, result)

    def _config(self, job_id: str, plan: JobPlan) -> Any:
        from worker.training import TrainingConfig

        with self.db.session_scope() as session:
            job = JobStore(session).job(job_id)
            assert job is not None
            files = self._file_paths(session, job)
            hp = dict(job.hyperparameters)
            seed = job.seed
        if files["training_file"] is None:
            raise FileNotFoundError("The training file was deleted.")
        return TrainingConfig(
            base_model=plan.base_model,
            model_cache_dir=self.settings.resolved_model_cache_dir,
            local_models=dict(self.settings.local_models),
            training_file=files["training_file"],
            validation_file=files["validation_file"],
            output_dir=plan.output_dir,
            training_type=plan.training_type,  # type: ignore[arg-type]
            n_epochs=_auto(hp.get("n_epochs")),
            batch_size=_auto(hp.get("batch_size")),
            learning_rate_multiplier=_auto(hp.get("learning_rate_multiplier")),
            lora_rank=int(hp.get("lora_rank", 8)),
            lora_alpha=int(hp.get("lora_alpha", 16)),
            lora_dropout=float(hp.get("lora_dropout", 0.0)),
            seed=seed,
            activation_memory_gib=self.settings.training_activation_memory_gib,
            precision=self.settings.training_precision,
            resume_from_checkpoint=latest_checkpoint(plan.output_dir),
        )

    # -- outcomes -------------------------------------------------------------------------

    def _succeed(self, job_id: str, plan: JobPlan, result: Any) -> None:
        with self.db.session_scope() as session:
            store = JobStore(session)
            job = store.job(job_id)
            assert job is not None
            results_file = FileService(session, self.storage, self.settings).store_bytes(
                job.project_id,
                results_csv(store.metrics_events(job_id)),
                filename="step_metrics.csv",
                purpose="fine-tune-results",
            )
            store.publish_model(
                job,
                plan.model_id,
                self._key(Path(result.final_dir)),
                plan.training_type,
                plan.base_model,
            )
            session.flush()
            moved = transition(
                session,
                job_id,
                JobStatus.SUCCEEDED,
                only_from={JobStatus.RUNNING},
                fine_tuned_model=plan.model_id,
                trained_tokens=int(result.trained_tokens),
                result_files=[results_file.id],
                finished_at=utcnow(),
                estimated_finish=None,
                lease_expires_at=None,
            )
            if not moved:
                # Cancelled in the last instant: the cancel wins, nothing is published.
                session.rollback()
                return
            store.add_event(job_id, f"New fine-tuned model created: {plan.model_id}")
            store.add_event(job_id, "The job has successfully completed")

    def _fail(self, job_id: str, exc: BaseException) -> None:
        code, message, param = describe_failure(exc)
        logger.exception("job %s failed", job_id, exc_info=exc)
        with self.db.session_scope() as session:
            if transition(
                session,
                job_id,
                JobStatus.FAILED,
                only_from={JobStatus.RUNNING},
                error_code=code,
                error_message=message,
                error_param=param,
                finished_at=utcnow(),
                estimated_finish=None,
                lease_expires_at=None,
            ):
                JobStore(session).add_event(job_id, message, level="error")

    def _key(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.storage.root))

    # -- used by the callbacks and the heartbeat ---------------------------------------

    def renew_lease(self, job_id: str) -> None:
        from sqlalchemy import update

        with self.db.session_scope() as session:
            session.execute(
                update(FineTuningJob)
                .where(
                    FineTuningJob.id == job_id,
                    FineTuningJob.worker_id == self.worker_id,
                    FineTuningJob.status == JobStatus.RUNNING.value,
                )
                .values(lease_expires_at=utcnow() + self.lease)
            )


CHECKPOINT_METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def _checkpoint_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """OpenAI's checkpoint metrics; the engine's extras (learning rate, speed) stay in events."""
    return {k: float(metrics[k]) for k in CHECKPOINT_METRICS if metrics.get(k) is not None}


def results_csv(metrics: list[dict[str, Any]]) -> bytes:
    """OpenAI's results file: one row per step, in the columns its users parse."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    )
    for m in metrics:
        writer.writerow(
            [
                m.get("step"),
                _fmt(m.get("train_loss")),
                _fmt(m.get("train_mean_token_accuracy")),
                _fmt(m.get("valid_loss")),
                _fmt(m.get("valid_mean_token_accuracy")),
            ]
        )
    return buffer.getvalue().encode()


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"


def describe_failure(exc: BaseException) -> tuple[str, str, str | None]:
    """(code, message, param) for the job's `error`; no stack trace reaches the user."""
    from worker.training import TrainingError

    if isinstance(exc, TrainingError):
        return exc.code, str(exc), exc.param
    name = type(exc).__name__
    if "OutOfMemory" in name or isinstance(exc, MemoryError):
        return (
            "out_of_memory",
            "Training ran out of memory. Try a smaller batch_size, LoRA instead of full "
            "fine-tuning, or shorter examples.",
            None,
        )
    detail = str(exc).strip() or name
    return "training_failed", f"Training failed: {detail[:1000]}", None


class _Heartbeat:
    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner = runner
        self.job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.runner.heartbeat_seconds):
            try:
                self.runner.renew_lease(self.job_id)
            except Exception:  # a DB hiccup must not kill training; the next beat retries
                logger.warning("lease renewal failed for %s", self.job_id, exc_info=True)


class _JobCallbacks:
    """Engine callbacks -> rows. Each call is one short transaction."""

    def __init__(self, runner: JobRunner, plan: JobPlan) -> None:
        self.runner = runner
        self.plan = plan
        self.job_id = plan.job_id
        self._last_poll = 0.0
        self._ownership: tuple[str, str | None, int] | None = (
            JobStatus.RUNNING,
            runner.worker_id,
            plan.attempt,
        )
        self._started = time.monotonic()
        self._first_step: int | None = None
        with runner.db.session_scope() as session:
            self._recorded_up_to = JobStore(session).last_metrics_step(self.job_id)

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        if data and data.get("resumed"):  # the engine does not know the attempt; we do
            message = f"Resumed from step {data['step']} (attempt {self.plan.attempt})"
            data = None
        with self.runner.db.session_scope() as session:
            JobStore(session).add_event(self.job_id, message, level=level, data=data)

    def on_hyperparameters(self, resolved: Any) -> None:
        with self.runner.db.session_scope() as session:
            job = JobStore(session).job(self.job_id)
            if job is not None:
                job.resolved_hyperparameters = resolved.to_dict()

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        if self._first_step is None:
            self._first_step, self._started = step, time.monotonic()
        if step <= self._recorded_up_to:
            return  # replayed after a resume: each step appears once in the metrics
        data: dict[str, Any] = {"step": step, "total_steps": total_steps}
        data.update({k: float(v) for k, v in metrics.items() if v is not None})
        parts = [f"training loss={data['train_loss']:.4f}"] if "train_loss" in data else []
        if "valid_loss" in data:
            parts.append(f"validation loss={data['valid_loss']:.4f}")
        done = step - self._first_step + 1
        seconds_per_step = (time.monotonic() - self._started) / max(done, 1)
        with self.runner.db.session_scope() as session:
            store = JobStore(session)
            store.add_event(
                self.job_id,
                f"Step {step}/{total_steps}: {', '.join(parts)}",
                type="metrics",
                data=data,
            )
            job = store.job(self.job_id)
            if job is not None:
                if "trained_tokens" in metrics:
                    job.trained_tokens = int(metrics["trained_tokens"])
                job.estimated_finish = utcnow() + timedelta(
                    seconds=seconds_per_step * max(total_steps - step, 0)
                )
        self._recorded_up_to = step

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        model_id = f"{self.plan.model_id}:ckpt-step-{step}"
        with self.runner.db.session_scope() as session:
            store = JobStore(session)
            job = store.job(self.job_id)
            assert job is not None
            store.record_checkpoint(
                job,
                step=step,
                model_id=model_id,
                storage_key=self.runner._key(path),
                metrics={"step": step, **_checkpoint_metrics(metrics)},
                training_type=self.plan.training_type,
                base_model=self.plan.base_model,
            )
            store.add_event(self.job_id, f"Checkpoint created at step {step}: {model_id}")

    def on_checkpoint_deleted(self, step: int, path: Path) -> None:
        with self.runner.db.session_scope() as session:
            JobStore(session).remove_checkpoint(self.job_id, step)

    def should_stop(self) -> Any:
        """Polled between steps: "cancel" or "pause" when the API asked, and "cancel" when this
        attempt no longer owns the job (it was requeued and claimed by another attempt)."""
        now = time.monotonic()
        if now - self._last_poll >= STOP_POLL_SECONDS:
            self._last_poll = now
            with self.runner.db.session_scope() as session:
                self._ownership = JobStore(session).ownership(self.job_id)
        if self._ownership is None:
            return "cancel"  # the job row is gone
        status, worker_id, attempt = self._ownership
        if worker_id != self.runner.worker_id or attempt != self.plan.attempt:
            return "cancel"  # never write a pause checkpoint for a job another attempt owns
        if status == JobStatus.PAUSED:
            return "pause"
        if status != JobStatus.RUNNING:
            return "cancel"
        return None
