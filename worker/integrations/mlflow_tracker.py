"""A job's run in MLflow (Tuna's `mlflow` integration), through `MlflowClient` only: no global
active run, so runs of jobs one after another in a worker never mix.

The tracking URI is the server's `TUNA_MLFLOW_TRACKING_URI` (default: an SQLite store at
data_dir/mlflow/mlflow.db), never the caller's. The run carries the tag `tuna.job_id`: a
resumed attempt finds it by that tag and logs on. Logged: the job's settings and its
hyperparameters (resolved once training starts) as params; each step's metrics with the job's
step; each checkpoint as a tag (`tuna.checkpoint.step-N` = its `ft:` id, `tuna.latest_checkpoint`)
and its whole-validation-file metrics; the final status as the run's status (FINISHED, FAILED,
KILLED for a cancelled or paused job) and the tags `tuna.status`, `tuna.fine_tuned_model`,
`tuna.error`; a run this integration stopped logging to on an error of its own ends FAILED
with `tuna.integration_error`. No artifacts are written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.config import Settings
from worker.integrations import FinalStatus, JobRun

JOB_TAG = "tuna.job_id"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param's value
_RUN_STATUS = {
    "succeeded": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
    "paused": "KILLED",
}


def default_store(settings: Settings) -> Path:
    return (settings.data_dir / "mlflow").resolve()


def tracking_uri(settings: Settings) -> str:
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{default_store(settings) / 'mlflow.db'}"


class MlflowTracker:
    kind = "mlflow"

    def __init__(self, options: dict[str, Any], settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: JobRun) -> str:
        from mlflow.tracking import MlflowClient  # not installed: the caller's warn event says so

        uri = tracking_uri(self.settings)
        artifacts = None
        if not self.settings.mlflow_tracking_uri:
            default_store(self.settings).mkdir(parents=True, exist_ok=True)
            # Nothing is written there; an experiment must name a place, and not the cwd.
            artifacts = (default_store(self.settings) / "artifacts").as_uri()
        client = MlflowClient(tracking_uri=uri)
        name = self.options["experiment_name"]
        experiment_id = self._experiment(client, name, artifacts)
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{run.job_id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            verb = "Continuing"
        else:
            tags = {
                **(self.options.get("tags") or {}),
                JOB_TAG: run.job_id,
                "tuna.base_model": run.base_model,
                "tuna.method": run.method,
                "tuna.project": run.project,
            }
            created = client.create_run(
                experiment_id, run_name=self.options.get("run_name") or run.job_id, tags=tags
            )
            self.run_id = created.info.run_id
            verb = "Logging to"
        self.client = client
        self._params(run.job_config())
        return f"{verb} MLflow run {self.run_id} in experiment {name}"

    @staticmethod
    def _experiment(client: Any, name: str, artifacts: str | None) -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)
        try:
            return str(client.create_experiment(name, artifact_location=artifacts))
        except Exception:  # created meanwhile by another worker
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [
            Param(key, str(value)[:MAX_PARAM_VALUE])
            for key, value in values.items()
            if value is not None
        ]
        self.client.log_batch(self.run_id, params=params)

    def hyperparameters(self, values: dict[str, Any]) -> None:
        self._params(values)

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def checkpoint(self, step: int, model_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self.run_id,
            tags=[
                RunTag(f"tuna.checkpoint.step-{step}", model_id),
                RunTag("tuna.latest_checkpoint", model_id),
            ],
        )

    def finish(self, status: FinalStatus, details: dict[str, Any]) -> None:
        if self.client is None or self.run_id is None:
            return
        client, self.client = self.client, None
        if status is None and not details:
            return  # another attempt has the job and goes on with this run
        from mlflow.entities import RunTag

        tags = [RunTag("tuna.status", status)] if status is not None else []
        tags += [RunTag(f"tuna.{key}", str(value)[:5000]) for key, value in details.items()]
        client.log_batch(self.run_id, tags=tags)
        client.set_terminated(self.run_id, _RUN_STATUS[status] if status else "FAILED")
