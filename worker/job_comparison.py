"""Starting a succeeded job's automatic comparison: its validation set as an eval, a run per model.

`start` runs in the transaction that marks the job succeeded. It makes an eval of the
validation examples (`tuna_core.evals.validation_item`: the conversation before each example's
answer, and that answer; at most the job's `auto_eval.max_items`), graded by
`expected_answer_criteria` (exact match, and fuzzy similarity), and queues one ordinary eval run
per model: the starting model, each checkpoint the job kept and the final model, with the
model's validation loss (the training engine measures it before the first step, at each
checkpoint and at the end) in the run's metadata. `app.evals.job_comparison` reads them back.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.catalog.repository import ModelRepository
from app.config import Settings
from app.evals.job_comparison import (
    BASE,
    CHECKPOINT,
    FINAL,
    JOB,
    ROLE,
    STEP,
    VALID_LOSS,
    label,
)
from app.evals.queue import EvalRunQueue
from app.evals.schemas import CreateEvalRequest, CreateEvalRunRequest
from app.evals.service import EvalService
from app.files.repository import FileRepository
from app.files.storage import LocalStorage
from app.fine_tuning.repository import FineTuningRepository
from app.orm import FineTuningEvent, FineTuningJob, Project
from app.orm.base import utcnow
from tuna_core.evals import (
    VALIDATION_EXPECTED_FIELD,
    VALIDATION_INPUT_REFERENCE,
    VALIDATION_ITEM_SCHEMA,
    expected_answer_criteria,
    validation_item,
)
from tuna_core.model_ids import is_fine_tuned_model_id

logger = logging.getLogger("tuna.worker")

# An answer may run this far past the longest expected one (characters per token: a generous
# guess) before it is cut, so a starting model that rambles costs no more than that.
_CHARS_PER_TOKEN = 2
_MIN_ANSWER_TOKENS = 16
_MAX_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class Contender:
    """One model of the comparison: its role, `ft:` or base id, step and validation loss."""

    role: str
    model: str
    step: int
    valid_loss: float | None


def start(
    session: Session,
    settings: Settings,
    storage: LocalStorage,
    queue: EvalRunQueue,
    job: FineTuningJob,
    *,
    final_step: int,
    final_metrics: dict[str, float],
) -> str | None:
    """Makes the job's comparison (in the caller's transaction) and returns the eval's id, or
    None when there is none to make; says which on the job's events. Never raises: a job that
    trained well stays succeeded whatever goes wrong here."""
    wanted = job.auto_eval or {}
    if not job.validation_file or not wanted.get("enabled"):
        return None
    jobs = FineTuningRepository(session)
    try:
        with session.begin_nested():
            items = _validation_items(session, storage, job, int(wanted["max_items"]))
            if not items:
                jobs.add_event(
                    job.id,
                    "Skipped the automatic evaluation: no validation example ends in a text "
                    "answer from the assistant to compare with.",
                    level="warn",
                )
                return None
            contenders = _contenders(session, job, final_step, final_metrics)
            eval_id = _create(session, settings, storage, queue, job, items, contenders)
            job.eval_id = eval_id
            checkpoints = sum(1 for c in contenders if c.role == CHECKPOINT)
            jobs.add_event(
                job.id,
                f"Evaluating the starting model, {checkpoints} checkpoint(s) and the final "
                f"model on {len(items)} validation example(s): eval {eval_id}",
                data={"eval_id": eval_id},
            )
            return eval_id
    except Exception as exc:
        logger.exception("could not start the automatic evaluation of job %s", job.id)
        jobs.add_event(
            job.id, f"Could not start the automatic evaluation: {exc}"[:1000], level="warn"
        )
        return None


def _validation_items(
    session: Session, storage: LocalStorage, job: FineTuningJob, limit: int
) -> list[dict[str, Any]]:
    """The first ``limit`` validation examples that have an answer to compare with."""
    row = FileRepository(session).get(job.project_id, str(job.validation_file), now=utcnow())
    if row is None:
        raise ValueError(f"the validation file {job.validation_file} was deleted")
    items: list[dict[str, Any]] = []
    with storage.path(row.storage_key).open("rb") as lines:
        for line in lines:
            if len(items) >= limit:
                break
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError:
                continue  # the job validated the file; a line it skipped is skipped here too
            item = validation_item(example) if isinstance(example, dict) else None
            if item is not None:
                items.append(item)
    return items


def _contenders(
    session: Session, job: FineTuningJob, final_step: int, final_metrics: dict[str, float]
) -> list[Contender]:
    """The starting model, each kept checkpoint before the last step, and the final model (the
    checkpoint at the last step is the final model itself)."""
    jobs = FineTuningRepository(session)
    contenders = [Contender(BASE, job.model, 0, _baseline_loss(session, job.id))]
    if (
        is_fine_tuned_model_id(job.model)
        and ModelRepository(session).get(job.project_id, job.model) is None
    ):
        # A continued job whose starting model was deleted meanwhile: compare the rest.
        contenders = []
        jobs.add_event(
            job.id,
            f"The starting model {job.model} was deleted: the comparison leaves it out.",
            level="warn",
        )
    for checkpoint in sorted(jobs.checkpoints_of(job.id), key=lambda c: c.step_number):
        if checkpoint.step_number < final_step:
            contenders.append(
                Contender(
                    CHECKPOINT,
                    checkpoint.fine_tuned_model_checkpoint,
                    checkpoint.step_number,
                    _loss(checkpoint.metrics),
                )
            )
    assert job.fine_tuned_model is not None
    contenders.append(Contender(FINAL, job.fine_tuned_model, final_step, _loss(final_metrics)))
    return contenders


def _loss(metrics: dict[str, Any] | None) -> float | None:
    """The full validation loss where it was measured, else the last sampled one."""
    for key in ("full_valid_loss", "valid_loss"):
        value = (metrics or {}).get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _baseline_loss(session: Session, job_id: str) -> float | None:
    """The starting model's validation loss: the engine's ``baseline`` event before step 1."""
    stmt = (
        select(FineTuningEvent.data)
        .where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "message")
        .where(FineTuningEvent.data.is_not(None))
        .order_by(FineTuningEvent.seq)
    )
    for data in session.scalars(stmt):
        if isinstance(data, dict) and isinstance(data.get("baseline"), dict):
            return _loss(data["baseline"])
    return None


def _create(
    session: Session,
    settings: Settings,
    storage: LocalStorage,
    queue: EvalRunQueue,
    job: FineTuningJob,
    items: list[dict[str, Any]],
    contenders: Sequence[Contender],
) -> str:
    project = session.get(Project, job.project_id)
    assert project is not None
    evals = EvalService(session, settings, storage, queue)
    row = evals.create(
        project,
        CreateEvalRequest(
            name=f"{job.id}: validation set",
            data_source_config={
                "type": "custom",
                "item_schema": VALIDATION_ITEM_SCHEMA,
                "include_sample_schema": True,
            },
            testing_criteria=expected_answer_criteria(VALIDATION_EXPECTED_FIELD),
            metadata={JOB: job.id},
        ),
    )
    longest = max(len(str(item[VALIDATION_EXPECTED_FIELD])) for item in items)
    max_tokens = min(_MAX_ANSWER_TOKENS, max(_MIN_ANSWER_TOKENS, longest // _CHARS_PER_TOKEN + 8))
    content = [{"item": item} for item in items]
    for contender in contenders:
        metadata = {JOB: job.id, ROLE: contender.role, STEP: str(contender.step)}
        if contender.valid_loss is not None:
            metadata[VALID_LOSS] = repr(contender.valid_loss)
        evals.create_run(
            project,
            row.id,
            CreateEvalRunRequest(
                name=label(contender.role, contender.step),
                metadata=metadata,
                data_source={
                    "type": "completions",
                    "source": {"type": "file_content", "content": content},
                    "input_messages": {
                        "type": "item_reference",
                        "item_reference": VALIDATION_INPUT_REFERENCE,
                    },
                    "model": contender.model,
                    # Greedy answers: the table compares models, not sampling luck.
                    "sampling_params": {"temperature": 0, "max_completions_tokens": max_tokens},
                },
            ),
            counted=False,
        )
    return row.id
