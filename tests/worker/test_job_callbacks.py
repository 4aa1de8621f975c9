"""The engine's callbacks turned into a job's rows, for each method: step events (message and
data), checkpoints with OpenAI's metric fields only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import Database
from app.exports.repository import ExportRepository, export_folder
from app.files.storage import LocalStorage
from app.fine_tuning.repository import FineTuningRepository
from app.migrate import upgrade
from app.orm import FineTuningJob, Project
from tuna_core.model_ids import checkpoint_model_id
from worker.job_callbacks import JobCallbacks, JobPlan, step_message

DPO_STEP = {
    "train_loss": 0.693147,
    "train_reward_accuracy": 0.5,
    "train_reward_margin": 0.01,
    "train_chosen_reward": 0.02,
    "train_rejected_reward": 0.01,
    "learning_rate": 1e-4,
}


def test_step_messages() -> None:
    assert step_message(3, 12, {"train_loss": 1.23456}, "supervised") == (
        "Step 3/12: training loss=1.2346"
    )
    assert step_message(
        3,
        12,
        {"train_loss": 1.0, "train_mean_token_accuracy": 0.5, "valid_loss": 2.0},
        "supervised",
    ) == ("Step 3/12: training loss=1.0000, validation loss=2.0000")
    assert step_message(3, 12, DPO_STEP, "dpo") == (
        "Step 3/12: training loss=0.6931, reward accuracy=0.50"
    )
    with_valid = DPO_STEP | {"valid_loss": 0.7, "valid_reward_accuracy": 0.25}
    assert step_message(4, 12, with_valid, "dpo") == (
        "Step 4/12: training loss=0.6931, reward accuracy=0.50, validation loss=0.7000, "
        "validation reward accuracy=0.25"
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'callbacks.db'}"
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


def add_running_dpo_job(database: Database, project_id: str, **fields: Any) -> str:
    """A project (organization "org") and a DPO job of it that worker "w" runs (attempt 1), as
    rows only: what a worker's callbacks act on. Returns the job's id."""
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    with database.session_scope() as session:
        session.add(Project(id=project_id, name="org"))
        session.flush()
        row: dict[str, Any] = {
            "model": "tuna-tiny-test",
            "training_file": "file-x",
            "seed": 1,
            "method_type": "dpo",
            "hyperparameters": {},
            "status": "running",
            "result_files": [],
            "worker_id": "w",
            "attempt": 1,
        }
        session.add(FineTuningJob(id=job_id, project_id=project_id, **(row | fields)))
    return job_id


def test_a_dpo_jobs_metrics_and_checkpoints(database: Database, tmp_path: Path) -> None:
    job_id = add_running_dpo_job(database, "proj_callbacks")
    storage = LocalStorage(tmp_path / "storage")
    plan = JobPlan(
        job_id=job_id,
        worker_id="w",
        attempt=1,
        base_model="tuna-tiny-test",
        model_id="ft:tuna-tiny-test:org::abcdefgh",
        training_type="lora",
        output_dir=storage.root / "jobs" / job_id,
        method="dpo",
    )
    callbacks = JobCallbacks(database, storage, plan)
    callbacks.on_metrics(1, 2, DPO_STEP | {"valid_loss": 0.7, "valid_reward_accuracy": 0.25})
    folder = plan.output_dir / "checkpoints" / "step-1"
    folder.mkdir(parents=True)
    callbacks.on_checkpoint(1, folder, DPO_STEP | {"valid_loss": 0.7, "full_valid_loss": 0.8})

    with database.session_scope() as session:
        jobs = FineTuningRepository(session)
        (event,) = jobs.metrics_events(job_id)
        measured = DPO_STEP | {"valid_loss": 0.7, "valid_reward_accuracy": 0.25}
        assert event == {"step": 1, "total_steps": 2, **measured}
        (checkpoint,) = jobs.list_checkpoints(job_id, after=None, limit=10).items
        # OpenAI's checkpoint fields: losses for DPO too; token accuracy is not measured.
        assert checkpoint.metrics == {
            "step": 1,
            "train_loss": 0.693147,
            "valid_loss": 0.7,
            "full_valid_loss": 0.8,
        }
        messages = [e.message for e in jobs.list_events(job_id, after=None, limit=10).items]
    assert step_message(1, 2, measured, "dpo") in messages

    # Pruned later: its model row goes, and the downloads built of it, rows and files.
    model_id = checkpoint_model_id(plan.model_id, 1)
    with database.session_scope() as session:
        export = ExportRepository(session).create("proj_callbacks", model_id, "gguf-q8_0")
        built = storage.path(export_folder(export.id))
    built.mkdir(parents=True)
    (built / "model.gguf").write_bytes(b"GGUF")
    callbacks.on_checkpoint_deleted(1, folder)
    assert not built.exists()
    with database.session_scope() as session:
        assert ExportRepository(session).of_model(model_id) == []
        assert (
            FineTuningRepository(session).list_checkpoints(job_id, after=None, limit=10).items == []
        )
