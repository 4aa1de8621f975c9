"""One job, start to finish: validate the files, claim the job, train, publish the model.

This module is the flow only. Every status change and its event is `JobLifecycle`'s; the
engine's callbacks become rows in `worker.job_callbacks`; the lease is kept fresh by
`worker.heartbeat` while training runs, so a worker that dies (SIGKILL, OOM, node reboot) is
noticed within a lease period and its job is put back in the queue.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.config import Settings
from app.db import Database
from app.evals.queue import EvalRunQueue
from app.files.repository import FileRepository
from app.files.service import FileService
from app.files.storage import LocalStorage
from app.fine_tuning.lifecycle import JobFailure, JobLifecycle
from app.fine_tuning.repository import FineTuningRepository
from app.fine_tuning.state import JobStatus
from app.orm import FineTuningJob
from app.orm.base import utcnow
from tuna_core.base_models import ModelNotAvailable, get_base_model_info
from tuna_core.dataset import METHOD_FORMATS, MIN_TRAINING_EXAMPLES
from tuna_core.hyperparameters import engine_arguments
from tuna_core.model_ids import fine_tuned_model_id
from worker import job_comparison, results
from worker.heartbeat import Heartbeat
from worker.integrations import JobIntegrations
from worker.job_callbacks import JobCallbacks, JobPlan

logger = logging.getLogger("tuna.worker")

_CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")
_FILE_PARAMS = ("training_file", "validation_file")


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


class JobRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        storage: LocalStorage,
        worker_id: str,
        eval_queue: EvalRunQueue,
    ) -> None:
        self.settings = settings
        self.db = database
        self.storage = storage
        self.worker_id = worker_id
        self.eval_queue = eval_queue  # where a succeeded job's comparison runs are sent
        self.lease = timedelta(seconds=settings.job_lease_seconds)

    def run(self, job_id: str) -> None:
        tokenized: dict[Path, Any] = {}
        if not self._validate_files(job_id, tokenized):
            return
        plan = self._claim(job_id)
        if plan is None:
            return  # cancelled, paused, finished, or another worker has it: a harmless repeat
        self._train(plan, tokenized)

    # -- validating_files -> queued ---------------------------------------------------------

    def _validate_files(self, job_id: str, tokenized: dict[Path, Any]) -> bool:
        """validating_files -> queued (or failed); True when the job is ready to be claimed.

        The files' tokenized examples are left in ``tokenized`` for training to start from.
        """
        with self.db.session_scope() as session:
            job = FineTuningRepository(session).reload_job(job_id)
            if job is None:
                return False
            if job.status != JobStatus.VALIDATING_FILES:
                return job.status == JobStatus.QUEUED
            files = self._file_paths(session, job)
            base_model, method = job.trained_base_model, job.method_type
            source = self._source(job)
        try:
            failure = source_failure(*source) if source else None
            failure = failure or self._check_data(base_model, method, files, tokenized)
        except ModelNotAvailable as exc:  # a hub model the worker cannot download
            failure = JobFailure(exc.code, str(exc), "model")
        except Exception as exc:
            logger.exception("validating files of %s failed", job_id)
            failure = JobFailure("validation_failed", f"Could not validate the files: {exc}"[:1000])
        with self.db.session_scope() as session:
            lifecycle = JobLifecycle(session)
            if failure is not None:
                lifecycle.fail(job_id, failure, only_from={JobStatus.VALIDATING_FILES})
                return False
            return lifecycle.files_validated(job_id)

    def _source(self, job: FineTuningJob) -> tuple[str, Path] | None:
        """Continued training: (the `ft:` id the job continues, the folder of its weights)."""
        return (job.model, self.storage.path(job.init_from)) if job.init_from else None

    def _file_paths(self, session: Any, job: FineTuningJob) -> dict[str, Path | None]:
        files = FileRepository(session)
        paths: dict[str, Path | None] = dict.fromkeys(_FILE_PARAMS)
        for param in _FILE_PARAMS:
            file_id = getattr(job, param)
            if file_id:
                row = files.get(job.project_id, file_id, now=utcnow())
                paths[param] = self.storage.path(row.storage_key) if row else None
        return paths

    def _check_data(
        self,
        base_model: str,
        method: str,
        files: dict[str, Path | None],
        tokenized: dict[Path, Any],
    ) -> JobFailure | None:
        """Checks that need the tokenizer: the first failure. Files that pass are left
        tokenized in ``tokenized``."""
        from tuna_core.base_models import load_tokenizer, resolve_base_model
        from worker.training import validate_examples

        model_dir = resolve_base_model(
            base_model, self.settings.resolved_model_cache_dir, self.settings.base_model_folders
        )
        tokenizer = load_tokenizer(model_dir)
        context = get_base_model_info(base_model, self.settings.base_model_folders).context_length
        for param in _FILE_PARAMS:
            path = files[param]
            if param == "validation_file" and path is None:
                continue
            if path is None or not path.is_file():
                what = param.replace("_", " ")
                return JobFailure("invalid_training_file", f"The {what} was deleted.", param)
            report = validate_examples(path, tokenizer, context, keep_examples=True)
            if report.examples is not None:
                tokenized[path] = report.examples
            kind = "Training" if param == "training_file" else "Validation"
            code = f"invalid_{param}"
            if report.format is not None and report.format not in METHOD_FORMATS[method]:
                return JobFailure(
                    code,
                    f"{kind} file holds {report.format} examples, which the {method} method "
                    "does not train on.",
                    param,
                )
            if param == "training_file" and report.n_examples < MIN_TRAINING_EXAMPLES:
                return JobFailure(
                    "invalid_n_examples",
                    f"{kind} file has {report.n_examples} example(s), but must have at least "
                    f"{MIN_TRAINING_EXAMPLES} examples",
                    param,
                )
            if report.problems:
                first = report.problems[0]
                more = len(report.problems) - 1
                tail = f" ({more} more example(s) have problems)" if more else ""
                return JobFailure(code, f"Invalid file format. {first.message}{tail}", param)
        return None

    # -- queued -> running -> succeeded | failed --------------------------------------------

    def _claim(self, job_id: str) -> JobPlan | None:
        output_dir = self.storage.root / "jobs" / job_id
        with self.db.session_scope() as session:
            job = JobLifecycle(session).start(
                job_id,
                worker_id=self.worker_id,
                lease_until=utcnow() + self.lease,
                # A run with a checkpoint resumes from it and says so itself.
                from_checkpoint=latest_checkpoint(output_dir) is not None,
            )
            if job is None:
                return None
            base_model = get_base_model_info(
                job.trained_base_model, self.settings.base_model_folders
            ).name
            project = FineTuningRepository(session).project_of(job)
            return JobPlan(
                job_id=job_id,
                worker_id=self.worker_id,
                attempt=job.attempt,
                base_model=base_model,
                model_id=fine_tuned_model_id(base_model, project.name, job.suffix, job_id),
                training_type=str(job.hyperparameters.get("training_type", "lora")),
                output_dir=output_dir,
                method=job.method_type,
            )

    def _train(self, plan: JobPlan, tokenized: dict[Path, Any]) -> None:
        from worker.training import TrainingCancelled, TrainingError, TrainingPaused
        from worker.training.launch import RANK_LOST, train_on

        integrations = JobIntegrations.none(self.db, plan.job_id)
        try:
            with Heartbeat(self.db, plan.job_id, self.worker_id, self.lease):
                integrations = JobIntegrations.open(
                    self.settings,
                    self.db,
                    plan.job_id,
                    model_id=plan.model_id,
                    base_model=plan.base_model,
                )
                config = self._config(plan)
                callbacks = JobCallbacks(self.db, self.storage, plan, integrations)
                result = train_on(
                    self.settings.training_processes,
                    config,
                    callbacks,
                    tokenized,
                    nodes=self.settings.training_nodes,
                    rendezvous=self.settings.training_rendezvous,
                )
        except TrainingCancelled:
            return
        except TrainingPaused:
            with self.db.session_scope() as session:
                FineTuningRepository(session).add_event(
                    plan.job_id, "Training paused; resume continues from here"
                )
            return
        except TrainingError as exc:
            if exc.code != RANK_LOST or not self._requeue(plan.job_id, str(exc)):
                self._fail(plan.job_id, exc)
            return
        except BaseException as exc:  # every failure must surface on the job
            self._fail(plan.job_id, exc)
            if not isinstance(exc, Exception):
                raise
            return
        else:
            self._succeed(plan, result)
        finally:
            # W&B, MLflow: the run ends with the job's status (succeeded, failed, cancelled,
            # paused), whichever way the attempt ended.
            integrations.finish_as_recorded()

    def _config(self, plan: JobPlan) -> Any:
        from worker.training import TrainingConfig

        with self.db.session_scope() as session:
            job = FineTuningRepository(session).reload_job(plan.job_id)
            assert job is not None
            files = self._file_paths(session, job)
            hyperparameters = engine_arguments(job.hyperparameters, job.method_type)
            seed = job.seed
            source = self._source(job)
        if files["training_file"] is None:
            raise FileNotFoundError("The training file was deleted.")
        resume = latest_checkpoint(plan.output_dir)
        # Checked again here (it may have gone while the job waited in the queue); a run that
        # resumes from its own checkpoint needs no more of it.
        failure = source_failure(*source) if source and resume is None else None
        if failure is not None:
            from worker.training import TrainingError

            raise TrainingError(failure.message, failure.code, failure.param)
        return TrainingConfig(
            base_model=plan.base_model,
            model_cache_dir=self.settings.resolved_model_cache_dir,
            local_models=self.settings.base_model_folders,
            training_file=files["training_file"],
            validation_file=files["validation_file"],
            output_dir=plan.output_dir,
            **hyperparameters,
            seed=seed,
            activation_memory_gib=self.settings.training_activation_memory_gib,
            precision=self.settings.training_precision,
            resume_from_checkpoint=resume,
            init_from=source[1] if source else None,
        )

    def _succeed(self, plan: JobPlan, result: Any) -> None:
        with self.db.session_scope() as session:
            jobs = FineTuningRepository(session)
            job = jobs.reload_job(plan.job_id)
            assert job is not None
            results_file = FileService(session, self.storage, self.settings).store_bytes(
                job.project_id,
                results.results_csv(jobs.metrics_events(plan.job_id), plan.method),
                filename=results.FILENAME,
                purpose=results.PURPOSE,
            )
            jobs.publish_model(
                job,
                plan.model_id,
                self.storage.key_of(Path(result.final_dir)),
                plan.training_type,
                plan.base_model,
            )
            if not JobLifecycle(session).succeed(
                plan.job_id,
                model_id=plan.model_id,
                trained_tokens=int(result.trained_tokens),
                result_files=[results_file.id],
            ):
                # Cancelled in the last instant: the cancel wins, nothing is published.
                session.rollback()
                return
            jobs.refresh_job(job)
            job_comparison.start(
                session,
                self.settings,
                self.storage,
                self.eval_queue,
                job,
                final_step=int(result.total_steps),
                final_metrics=dict(result.metrics),
            )

    def _requeue(self, job_id: str, reason: str) -> bool:
        with self.db.session_scope() as session:
            lifecycle = JobLifecycle(session)
            return lifecycle.requeue_after_lost_process(
                job_id, reason, self.settings.max_job_attempts
            )

    def _fail(self, job_id: str, exc: BaseException) -> None:
        logger.exception("job %s failed", job_id, exc_info=exc)
        with self.db.session_scope() as session:
            JobLifecycle(session).fail(job_id, describe_failure(exc), only_from={JobStatus.RUNNING})


def source_failure(model_id: str, folder: Path) -> JobFailure | None:
    """A continued job whose source model's files are gone (deleted, or a checkpoint pruned
    since the job was created) cannot start: say which model, not a loader's traceback."""
    if folder.is_dir() and any(folder.iterdir()):
        return None
    return JobFailure(
        "model_not_found",
        f"The model {model_id} that this job continues training no longer exists: its files "
        "were deleted.",
        "model",
    )


def describe_failure(exc: BaseException) -> JobFailure:
    """The job's `error` for what training raised; no stack trace reaches the user."""
    from worker.training import TrainingError

    if isinstance(exc, TrainingError):
        return JobFailure(exc.code, str(exc), exc.param)
    name = type(exc).__name__
    if "OutOfMemory" in name or isinstance(exc, MemoryError):
        return JobFailure(
            "out_of_memory",
            "Training ran out of memory. Try a smaller batch_size, LoRA instead of full "
            "fine-tuning, or shorter examples.",
        )
    detail = str(exc).strip() or name
    return JobFailure("training_failed", f"Training failed: {detail[:1000]}")
