"""Data for the DPO and continued-training tests of the CLI and the dashboard: preference files,
metrics events and fine-tuned models as a finished job leaves them, written straight into the
test server's database where no worker should have to train for them."""

from __future__ import annotations

import uuid
from typing import Any

from app.auth import get_or_create_project
from app.fine_tuning.repository import FineTuningRepository
from app.orm import FineTuningJob
from tests.conftest import LiveServer
from tuna_core.metrics import metric_names
from tuna_core.model_ids import checkpoint_model_id, fine_tuned_model_id

TINY = "tuna-tiny-test"


def add_metrics(server: LiveServer, job_id: str, steps: list[dict[str, Any]]) -> None:
    """Metrics events as the worker writes them (one per step), straight into the database."""
    with server.app.state.db.session_scope() as session:
        repo = FineTuningRepository(session)
        for data in steps:
            repo.add_metrics_event(job_id, f"Step {data['step']}/{data['total_steps']}", data)


def dpo_steps() -> list[dict[str, Any]]:
    """Three DPO steps (names from tuna_core.metrics), a validation batch at the last."""
    train, valid = metric_names("dpo", "train"), metric_names("dpo", "valid")
    steps = []
    for step, (loss, accuracy, margin) in enumerate(
        [(0.6931, 0.5, 0.0), (0.6712, 0.625, 0.125), (0.65, 0.75, 0.25)], start=1
    ):
        values = dict(zip(train, (loss, accuracy, margin, 0.2, -0.05), strict=True))
        steps.append({"step": step, "total_steps": 3, "tokens_per_second": 900.0, **values})
    steps[-1].update(dict(zip(valid, (0.7, 0.5, 0.05, 0.1, 0.05), strict=True)))
    return steps


def add_fine_tuned_model(server: LiveServer, project_name: str) -> tuple[str, str]:
    """What a finished job of this project leaves behind: a final model and a checkpoint."""
    with server.app.state.db.session_scope() as session:
        project = get_or_create_project(session, project_name)
        repo = FineTuningRepository(session)
        job = repo.add_job(
            FineTuningJob(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                project_id=project.id,
                model=TINY,
                training_file="file-x",
                seed=0,
                hyperparameters={},
                status="succeeded",
                result_files=[],
            )
        )
        final = fine_tuned_model_id(TINY, project_name, "first", job.id)
        ckpt = checkpoint_model_id(final, 5)
        job.fine_tuned_model = final
        for model_id, step in ((ckpt, 5), (final, None)):
            repo.add_model(
                model_id=model_id,
                project_id=project.id,
                job_id=job.id,
                base_model=TINY,
                training_type="lora",
                storage_key=f"models/{job.id}/{step}",
                checkpoint_step=step,
            )
    return final, ckpt


def add_checkpoint(server: LiveServer, job_id: str, step: int, metrics: dict[str, Any]) -> str:
    """A checkpoint row of a job (what `/checkpoints` lists); returns its model id."""
    with server.app.state.db.session_scope() as session:
        repo = FineTuningRepository(session)
        job = repo.get_job(job_id)
        assert job is not None
        model = checkpoint_model_id(fine_tuned_model_id(job.model, "p", None, job.id), step)
        repo.add_checkpoint(
            job_id=job.id,
            project_id=job.project_id,
            step_number=step,
            fine_tuned_model_checkpoint=model,
            metrics=metrics,
            storage_key=f"checkpoints/{job.id}/{step}",
        )
    return model
