"""A job's integrations: its run logged to Weights & Biases and MLflow while it trains.

`JobIntegrations.open` reads the job's `integrations` (checked at creation by
`tuna_core.integrations`) and starts one tracker per entry; the job's callbacks
(`worker/job_callbacks.py`) hand it the resolved hyperparameters, each step's metrics and each
checkpoint, and the runner (`worker/runner.py`) the final status. Where the runs go is the
server's setting (`TUNA_WANDB_MODE`, `TUNA_WANDB_DIR`, `TUNA_MLFLOW_TRACKING_URI`).

An integration never fails the job: a package that is not installed, a run that cannot start, a
call that raises: the job gets one `warn` event naming the integration and the cause, that
integration is dropped for the rest of the attempt, and training goes on. A resumed attempt
(after a pause or a lost worker) continues the same run: W&B's run id is the job id
(`resume="allow"`), MLflow's run is found again by its `tuna.job_id` tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from app.config import Settings
from app.db import Database
from app.fine_tuning.repository import FineTuningRepository
from tuna_core.integrations import INTEGRATION_NAMES, settings_of

logger = logging.getLogger("tuna.worker.integrations")

# What the runner reports at the end of an attempt; None: the attempt lost the job to another
# one (requeued after a lost lease), which goes on logging to the same run.
FinalStatus = Literal["succeeded", "failed", "cancelled", "paused"] | None


@dataclass(frozen=True)
class JobRun:
    """What every tracker logs about a job, read once when the attempt starts."""

    job_id: str
    attempt: int
    project: str
    model: str  # as the caller gave it (a base model or an `ft:` id)
    base_model: str
    model_id: str  # the `ft:` id the job will publish
    method: str
    seed: int
    training_file: str
    validation_file: str | None
    suffix: str | None
    hyperparameters: dict[str, Any]  # as stored ("auto" until resolved)
    data_dir: Path

    def job_config(self) -> dict[str, Any]:
        """The job's fixed settings: W&B config keys, MLflow params."""
        return {
            "job_id": self.job_id,
            "model": self.model,
            "base_model": self.base_model,
            "fine_tuned_model": self.model_id,
            "method": self.method,
            "seed": self.seed,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "suffix": self.suffix,
        }


class Tracker(Protocol):
    """One integration's run. Every method may raise: `JobIntegrations` contains it."""

    kind: str

    def start(self, run: JobRun) -> str:
        """Start (or continue) the run; returns the sentence of the job's info event."""
        ...

    def hyperparameters(self, values: dict[str, Any]) -> None: ...

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None: ...

    def checkpoint(self, step: int, model_id: str, metrics: dict[str, float]) -> None: ...

    def finish(self, status: FinalStatus, details: dict[str, Any]) -> None:
        """End the run with the job's status and details (`fine_tuned_model`, `error`, ...).
        Without a status: with details (`integration_error`), the run ends as failed;
        without, it is left to the attempt that now has the job."""
        ...


class IntegrationUnavailable(Exception):
    """The integration cannot run on this server (its package is missing, or it is disabled by
    a setting); the message says why, for the job's warn event."""


def _tracker_for(kind: str, options: dict[str, Any], settings: Settings) -> Tracker:
    if kind == "wandb":
        from worker.integrations.wandb_tracker import WandbTracker

        return WandbTracker(options, settings)
    if kind == "mlflow":
        from worker.integrations.mlflow_tracker import MlflowTracker

        return MlflowTracker(options, settings)
    raise IntegrationUnavailable(f"the integration type '{kind}' is not supported")


@dataclass
class JobIntegrations:
    """The trackers of one attempt of one job; an empty one (no integrations) does nothing."""

    db: Database
    job_id: str
    attempt: int = 0
    trackers: list[Tracker] = field(default_factory=list)
    _hyperparameters: dict[str, Any] = field(default_factory=dict)
    # The last step's number, total steps and the metrics it logged.
    _last_step: tuple[int, int, frozenset[str]] = (0, 0, frozenset())

    @classmethod
    def none(cls, db: Database, job_id: str) -> JobIntegrations:
        return cls(db, job_id)

    @classmethod
    def open(
        cls, settings: Settings, db: Database, job_id: str, *, model_id: str, base_model: str
    ) -> JobIntegrations:
        """Start a tracker for each of the job's integrations (none: nothing is imported)."""
        with db.session_scope() as session:
            jobs = FineTuningRepository(session)
            job = jobs.reload_job(job_id)
            if job is None or not job.integrations:
                return cls(db, job_id, job.attempt if job else 0)
            entries = [dict(entry) for entry in job.integrations]
            run = JobRun(
                job_id=job.id,
                attempt=job.attempt,
                project=jobs.project_of(job).name,
                model=job.model,
                base_model=base_model,
                model_id=model_id,
                method=job.method_type,
                seed=job.seed,
                training_file=job.training_file,
                validation_file=job.validation_file,
                suffix=job.suffix,
                hyperparameters=dict(job.hyperparameters or {}),
                data_dir=settings.data_dir.resolve(),
            )
        opened = cls(db, job_id, run.attempt, _hyperparameters=dict(run.hyperparameters))
        for entry in entries:
            try:
                kind, options = settings_of(entry)
            except Exception:  # a row written before the types were checked
                opened._warn(str(entry.get("type")), "it is not a supported integration")
                continue
            tracker: Tracker | None = None
            try:
                tracker = _tracker_for(kind, options, settings)
                opened._info(tracker.start(run))
            except IntegrationUnavailable as exc:
                opened._warn(kind, str(exc))
                continue
            except ImportError as exc:
                opened._warn(kind, f"its package is not installed on this server ({exc})")
                continue
            except Exception as exc:
                logger.warning("job %s: %s integration did not start", job_id, kind, exc_info=True)
                opened._warn(kind, f"its run could not start ({_describe(exc)})")
                if tracker is not None:  # a run it may have begun is closed as failed
                    _quietly(tracker.finish, None, {"integration_error": _describe(exc)})
                continue
            opened.trackers.append(tracker)
        return opened

    # -- the callbacks' side ----------------------------------------------------------------

    def hyperparameters(self, resolved: dict[str, Any]) -> None:
        values = {**self._hyperparameters, **resolved}
        self._each("log the hyperparameters", lambda tracker: tracker.hyperparameters(values))

    def metrics(self, step: int, total_steps: int, metrics: dict[str, Any]) -> None:
        numbers = {
            key: float(value)
            for key, value in metrics.items()
            if key not in ("step", "total_steps")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        self._last_step = (step, total_steps, frozenset(numbers))
        self._each("log metrics", lambda tracker: tracker.metrics(step, total_steps, numbers))

    def checkpoint(self, step: int, model_id: str, metrics: dict[str, Any]) -> None:
        numbers = {
            key: float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        # A checkpoint is measured on the whole validation file (`full_valid_*`): those go in
        # the step's metrics too, unless the step already reported them (the last step does).
        last, total_steps, logged = self._last_step
        extra = {
            key: value
            for key, value in numbers.items()
            if key.startswith("full_valid_") and not (step == last and key in logged)
        }
        if extra:
            self._each("log metrics", lambda tracker: tracker.metrics(step, total_steps, extra))
        self._each("log a checkpoint", lambda tracker: tracker.checkpoint(step, model_id, numbers))

    # -- the runner's side ------------------------------------------------------------------

    def finish_as_recorded(self) -> None:
        """Close every run with the status the attempt left the job in: succeeded (with its
        model), failed (with its error), cancelled, paused; a job another attempt has taken over
        (or one still running: the attempt broke off) is closed without a status."""
        if not self.trackers:
            return
        status: FinalStatus = None
        details: dict[str, Any] = {}
        try:
            with self.db.session_scope() as session:
                job = FineTuningRepository(session).reload_job(self.job_id)
                if job is not None and job.attempt == self.attempt:
                    if job.status in ("succeeded", "failed", "cancelled", "paused"):
                        status = job.status  # type: ignore[assignment]
                    details = {
                        "fine_tuned_model": job.fine_tuned_model,
                        "trained_tokens": job.trained_tokens,
                        "error": job.error_message,
                    }
        except Exception:
            logger.exception("job %s: could not read its status for its integrations", self.job_id)
        self.finish(status, **details)

    def finish(self, status: FinalStatus, **details: Any) -> None:
        """Close every run with the job's status (once; later calls do nothing)."""
        shown = {key: value for key, value in details.items() if value is not None}
        self._each("close its run", lambda tracker: tracker.finish(status, shown))
        self.trackers = []

    # -- containment ------------------------------------------------------------------------

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                logger.warning(
                    "job %s: %s failed to %s", self.job_id, tracker.kind, what, exc_info=True
                )
                self.trackers.remove(tracker)
                self._warn(tracker.kind, f"it failed to {what} ({_describe(exc)}) and stopped")
                # Its run is closed as failed, saying why; the job's status is not set there.
                _quietly(tracker.finish, None, {"integration_error": _describe(exc)})

    def _warn(self, kind: str, reason: str) -> None:
        name = INTEGRATION_NAMES.get(kind, kind)
        self._event(
            "warn",
            f"The {name} integration is not logging this job: {reason}. Training goes on "
            "without it.",
        )

    def _info(self, message: str) -> None:
        self._event("info", message)

    def _event(self, level: str, message: str) -> None:
        try:
            with self.db.session_scope() as session:
                FineTuningRepository(session).add_event(self.job_id, message[:2000], level=level)
        except Exception:  # never let telling about an integration fail the job either
            logger.exception("job %s: could not record an integration event", self.job_id)


def _describe(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _quietly(call: Callable[..., None], *args: Any) -> None:
    try:
        call(*args)
    except Exception:
        logger.debug("closing an integration that had failed", exc_info=True)
