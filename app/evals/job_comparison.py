"""A fine-tuning job's automatic comparison read back: the table on the job, and its event.

When a job with a validation file succeeds, the worker (`worker.job_comparison.start`) makes an
eval of the validation examples and queues one run per model: the starting model (step 0), every
checkpoint the job kept and the final model. Each run's metadata names the job, the model's
role and step, and carries that model's validation loss, so the table needs nothing but the
eval's runs. `table` turns them into what the job object shows as `eval`; `report_if_finished`
writes that table as the job's event once every run has ended, exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.evals.repository import ACTIVE_RUN_STATUSES, COMPLETED, QUEUED, EvalRepository
from app.fine_tuning.repository import FineTuningRepository
from app.orm import EvalRun, FineTuningJob
from app.orm.base import utcnow

# The runs' metadata keys, and the roles a model plays in the comparison.
JOB, ROLE, STEP, VALID_LOSS = "fine_tuning_job", "role", "step", "valid_loss"
BASE, CHECKPOINT, FINAL = "base", "checkpoint", "final"
# The two criteria `expected_answer_criteria` makes: the table's two score columns.
EXACT, SIMILAR = "exact", "similar"


def label(role: str, step: int) -> str:
    """How a row (and its run) is named: "base", "step 10", "final"."""
    return f"step {step}" if role == CHECKPOINT else role


# -- reading it back --------------------------------------------------------------------------


def table(eval_id: str, runs: Sequence[EvalRun]) -> dict[str, Any] | None:
    """The job object's ``eval``: one row per model with its exact-match rate, mean
    similarity and validation loss, the best fine-tuned one marked; None with no runs left."""
    job_runs = [run for run in runs if _meta(run, ROLE) in (BASE, CHECKPOINT, FINAL)]
    if not job_runs:
        return None
    order = {BASE: 0, CHECKPOINT: 1, FINAL: 2}
    job_runs.sort(key=lambda r: (order[str(_meta(r, ROLE))], int(_meta(r, STEP) or 0)))
    rows = [_row(run) for run in job_runs]
    best = _best(rows)
    for row in rows:
        row["best"] = row is best
    items = max((run.items_total for run in job_runs), default=0)
    return {
        "id": eval_id,
        "status": _overall_status([run.status for run in job_runs]),
        "items": items,
        "best_model": best["model"] if best else None,
        "rows": rows,
    }


def _meta(run: EvalRun, key: str) -> str | None:
    value = (run.metadata_ or {}).get(key)
    return None if value is None else str(value)


def _row(run: EvalRun) -> dict[str, Any]:
    role = _meta(run, ROLE) or FINAL
    step = int(_meta(run, STEP) or 0)
    loss = _meta(run, VALID_LOSS)
    scores = {str(c.get("testing_criteria")): c for c in run.per_testing_criteria_results or []}
    exact, similar = scores.get(EXACT, {}), scores.get(SIMILAR, {})
    graded = int(exact.get("passed", 0)) + int(exact.get("failed", 0))
    done = run.status == COMPLETED
    return {
        "label": label(role, step),
        "role": role,
        "model": run.model,
        "step": step,
        "run_id": run.id,
        "status": run.status,
        "exact_match": exact.get("passed", 0) / graded if done and graded else None,
        "similarity": similar.get("average_score") if done else None,
        "valid_loss": float(loss) if loss is not None else None,
        "errored": (run.result_counts or {}).get("errored", 0) if done else None,
    }


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fine-tuned model with the most exact answers; then the most similar ones, the lowest
    validation loss and, all else equal, the earlier step (fewer steps, less forgetting)."""
    graded = [r for r in rows if r["role"] != BASE and r["exact_match"] is not None]
    if not graded:
        return None

    def key(row: dict[str, Any]) -> tuple[float, float, float, int]:
        loss = row["valid_loss"]
        return (
            row["exact_match"],
            row["similarity"] or 0.0,
            -loss if loss is not None else -math.inf,
            -row["step"],
        )

    return max(graded, key=key)


def _overall_status(statuses: Sequence[str]) -> str:
    if all(status == QUEUED for status in statuses):
        return "queued"
    if any(status in ACTIVE_RUN_STATUSES for status in statuses):
        return "in_progress"
    if any(status == COMPLETED for status in statuses):
        return "completed"
    return statuses[-1]  # all failed or canceled: say which the last one did


# -- when the last run ends -------------------------------------------------------------------


def report_if_finished(session: Session, eval_id: str) -> None:
    """Once every run of a job's comparison has ended, writes the table as the job's event,
    exactly once. Called in the transaction that ended a run (the worker's completion or
    failure, the API's cancel): the job's row is locked first, so of two runs ending together
    the second sees the first's status, and the first to see all ended writes the event."""
    job_id = session.scalar(select(FineTuningJob.id).where(FineTuningJob.eval_id == eval_id))
    if job_id is None:
        return
    session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id)
        .values(id=FineTuningJob.id)
        .execution_options(synchronize_session=False)
    )
    runs = EvalRepository(session).runs_of_evals([eval_id])[eval_id]
    if any(run.status in ACTIVE_RUN_STATUSES for run in runs):
        return
    summary = table(eval_id, runs)
    if summary is None:
        return
    claimed = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.eval_reported_at.is_(None))
        .values(eval_reported_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return
    FineTuningRepository(session).add_event(job_id, describe(summary), data={"eval": summary})


def describe(summary: dict[str, Any]) -> str:
    """The event's sentence: the best model's scores against the starting model's."""
    rows = summary["rows"]
    base = next((r for r in rows if r["role"] == BASE), None)
    best = next((r for r in rows if r["best"]), None)
    head = f"Evaluation on {summary['items']} validation example(s) finished"
    if best is None:
        return f"{head}: no fine-tuned model could be graded."
    text = f"{head}. Best: {best['label']} ({_scores(best)})"
    if base is not None and base["exact_match"] is not None:
        text += f"; starting model: {_scores(base)}"
    return text + "."


def _scores(row: dict[str, Any]) -> str:
    parts = [f"exact match {row['exact_match']:.0%}"]
    if row["similarity"] is not None:
        parts.append(f"similarity {row['similarity']:.2f}")
    if row["valid_loss"] is not None:
        parts.append(f"validation loss {row['valid_loss']:.4f}")
    return ", ".join(parts)
