"""Data for the DPO, continued-training and comparison tests of the CLI and the dashboard:
preference files, metrics events, fine-tuned models and a succeeded job's comparison eval as a
finished job leaves them, written straight into the test server's database where no worker
should have to train or evaluate for them."""

from __future__ import annotations

import uuid
from typing import Any

from app.auth import get_or_create_project
from app.evals.job_comparison import label
from app.evals.repository import EvalRepository
from app.fine_tuning.repository import FineTuningRepository
from app.orm import Eval, EvalRun, FineTuningJob
from tests.conftest import LiveServer
from tuna_core.evals import VALIDATION_EXPECTED_FIELD, expected_answer_criteria
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


# -- a succeeded job's automatic comparison ---------------------------------------------------


def comparison_run(
    role: str,
    step: int,
    *,
    valid_loss: str | None = None,
    exact: tuple[int, int] | None = None,
    similar: tuple[int, int, float] | None = None,
    status: str | None = None,
    errored: int = 0,
) -> dict[str, Any]:
    """One run of a comparison as the worker leaves it: its metadata (role, step, valid_loss as
    a string) and, when graded, `exact` (passed, failed) and `similar` (passed, failed, mean)."""
    metadata = {"role": role, "step": str(step)}
    if valid_loss is not None:
        metadata["valid_loss"] = valid_loss
    results: list[dict[str, Any]] = []
    if exact is not None:
        results.append({"testing_criteria": "exact", "passed": exact[0], "failed": exact[1]})
    if similar is not None:
        results.append(
            {
                "testing_criteria": "similar",
                "passed": similar[0],
                "failed": similar[1],
                "average_score": similar[2],
            }
        )
    graded = exact[0] + exact[1] if exact is not None else 0
    return {
        "role": role,
        "step": step,
        "metadata": metadata,
        "status": status or ("completed" if results else "queued"),
        "per_testing_criteria_results": results or None,
        "result_counts": (
            {"total": graded + errored, "passed": exact[0], "failed": exact[1], "errored": errored}
            if exact is not None
            else None
        ),
    }


def add_job_comparison(
    server: LiveServer, project_name: str, runs: list[dict[str, Any]], items: int = 4
) -> tuple[str, str, dict[str, str]]:
    """A succeeded supervised job with a validation file, its comparison eval and one run per
    `comparison_run` (the final model's id is the job's `ft:` model, a checkpoint's is
    `...:ckpt-step-N`); returns (job id, eval id, {row label: run id})."""
    with server.app.state.db.session_scope() as session:
        project = get_or_create_project(session, project_name)
        jobs = FineTuningRepository(session)
        job = jobs.add_job(
            FineTuningJob(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                project_id=project.id,
                model=TINY,
                training_file="file-train",
                validation_file="file-valid",
                seed=0,
                hyperparameters={},
                status="succeeded",
                result_files=[],
                auto_eval={"enabled": True, "max_items": 40},
            )
        )
        final = fine_tuned_model_id(TINY, project_name, "cmp", job.id)
        job.fine_tuned_model = final
        evals = EvalRepository(session)
        evaluation = evals.add_eval(
            Eval(
                id=f"eval_{uuid.uuid4().hex[:24]}",
                project_id=project.id,
                name=f"{job.id}: validation set",
                metadata_={"fine_tuning_job": job.id},
                data_source_config={"type": "custom", "schema": {"type": "object"}},
                testing_criteria=expected_answer_criteria(VALIDATION_EXPECTED_FIELD),
            )
        )
        job.eval_id = evaluation.id
        ids: dict[str, str] = {}
        for spec in runs:
            role, step = spec["role"], spec["step"]
            model = {"base": TINY, "final": final}.get(role) or checkpoint_model_id(final, step)
            run = evals.add_run(
                EvalRun(
                    id=f"evalrun_{uuid.uuid4().hex[:24]}",
                    eval_id=evaluation.id,
                    project_id=project.id,
                    name=label(role, step),
                    model=model,
                    data_source={
                        "type": "completions",
                        "source": {"type": "file_content", "content": []},
                        "model": model,
                    },
                    metadata_={"fine_tuning_job": job.id, **spec["metadata"]},
                    status=spec["status"],
                    result_counts=spec["result_counts"],
                    per_testing_criteria_results=spec["per_testing_criteria_results"],
                    items_total=items,
                    items_done=items if spec["status"] == "completed" else 0,
                )
            )
            ids[label(role, step)] = run.id
        job_id, eval_id = job.id, evaluation.id
    return job_id, eval_id, ids


def finish_comparison_run(
    server: LiveServer, run_id: str, exact: tuple[int, int], similar: tuple[int, int, float]
) -> None:
    """A queued run of a comparison graded and completed, as the eval worker leaves it."""
    graded = comparison_run("final", 0, exact=exact, similar=similar)
    with server.app.state.db.session_scope() as session:
        repo = EvalRepository(session)
        assert repo.move_run(run_id, "in_progress", only_from=["queued"])
        assert repo.move_run(
            run_id,
            "completed",
            only_from=["in_progress"],
            result_counts=graded["result_counts"],
            per_testing_criteria_results=graded["per_testing_criteria_results"],
            items_done=exact[0] + exact[1],
        )
