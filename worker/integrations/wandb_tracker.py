"""A job's run in Weights & Biases (OpenAI's `wandb` integration).

The run's id is the job's id and it is opened with `resume="allow"`, so every attempt of a job
(after a pause, or a worker lost mid-training) logs to the same run. The mode is the server's
`TUNA_WANDB_MODE`: `offline` (the default) writes the run under `TUNA_WANDB_DIR` and nothing
leaves the machine (`wandb sync <dir>/wandb/offline-run-*` uploads it later; each attempt has a
folder of its own there, all with the job's run id); `online` needs `WANDB_API_KEY`.

Logged: the job's settings and hyperparameters (resolved once training starts) as config; each
step's metrics (`train_loss`, `train_mean_token_accuracy`, `valid_*`, `full_valid_*`, DPO's
reward metrics: `tuna_core.metrics`) at W&B step = the job's step; each checkpoint's model id and
metrics in the summary (`checkpoints/step-N`, `latest_checkpoint`; no weights are uploaded);
the job's final status (`status`, `fine_tuned_model`, `error`) in the summary, and the run
finished with exit code 0 (succeeded, paused) or 1 (failed, cancelled; or this integration
stopped on an error of its own, named by `integration_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Settings
from worker.integrations import FinalStatus, IntegrationUnavailable, JobRun

MAX_TAG = 64  # W&B's limit


def wandb_dir(settings: Settings) -> Path:
    """Where W&B writes its `wandb/` folder of runs (`TUNA_WANDB_DIR`, or data_dir/wandb)."""
    return (settings.wandb_dir or settings.data_dir / "wandb").resolve()


class WandbTracker:
    kind = "wandb"

    def __init__(self, options: dict[str, Any], settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.run: Any = None

    def start(self, run: JobRun) -> str:
        mode = self.settings.wandb_mode
        if mode == "disabled":
            raise IntegrationUnavailable(
                "this server has Weights & Biases disabled (TUNA_WANDB_MODE=disabled)"
            )
        import wandb  # not installed: the caller's warn event says so

        directory = wandb_dir(self.settings)
        directory.mkdir(parents=True, exist_ok=True)
        # OpenAI tags its runs openai/finetune, openai/{base model}, openai/{job id}.
        tags = ["tuna/finetune", f"tuna/{run.base_model}", f"tuna/{run.job_id}"]
        tags += [tag for tag in self.options.get("tags") or [] if tag not in tags]
        self.run = wandb.init(
            project=self.options["project"],
            entity=self.options.get("entity"),
            name=self.options.get("name") or run.job_id,
            tags=[tag[:MAX_TAG] for tag in tags],
            id=run.job_id,
            resume="allow",
            reinit="create_new",  # a worker runs one job after another in one process
            mode=mode,
            dir=str(directory),
            job_type="fine-tune",
            config={**run.job_config(), **run.hyperparameters},
            settings=wandb.Settings(
                console="off",  # the worker's own output stays the worker's
                silent=True,
                save_code=False,
                disable_git=True,
                disable_job_creation=True,
                x_disable_stats=True,
                x_disable_meta=True,
                x_disable_machine_info=True,
            ),
        )
        where = "offline, on the server" if mode == "offline" else "online"
        entity = self.options.get("entity")
        project = f"{entity}/{self.options['project']}" if entity else self.options["project"]
        return f"Logging to Weights & Biases run {run.job_id} in project {project} ({where})"

    def hyperparameters(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)  # again for the same step: merged into its row
        self.run.summary["total_steps"] = total_steps

    def checkpoint(self, step: int, model_id: str, metrics: dict[str, float]) -> None:
        self.run.summary[f"checkpoints/step-{step}"] = {"model": model_id, "step": step, **metrics}
        self.run.summary["latest_checkpoint"] = model_id

    def finish(self, status: FinalStatus, details: dict[str, Any]) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        if status is not None:
            run.summary["status"] = status
        for key, value in details.items():
            run.summary[key] = value
        # Failed: the job failed or was cancelled, or this integration stopped on an error.
        failed = status in ("failed", "cancelled") or (status is None and bool(details))
        run.finish(exit_code=1 if failed else 0)
