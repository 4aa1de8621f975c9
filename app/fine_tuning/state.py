"""The job state machine: OpenAI's statuses, the moves allowed between them, one `transition`.

Both the API (cancel, pause, resume) and the worker (validate, claim, finish) move jobs only
through `transition`, which is a conditional `UPDATE ... WHERE id = ? AND status IN (sources)`:
of two racing movers exactly one sees a row count of 1, so running a task twice, or a cancel
landing while the job finishes, always ends in one consistent state.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.orm import FineTuningJob


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


S = JobStatus

ALLOWED_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.PAUSED, S.FAILED, S.CANCELLED}),
    # running -> queued: its worker vanished (lease expired); the job goes back to the queue.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSED, S.QUEUED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset(status for status, moves in ALLOWED_MOVES.items() if not moves)
ACTIVE = frozenset({S.VALIDATING_FILES, S.QUEUED, S.RUNNING})
# Statuses in which a job needs a message in the broker for a worker to pick it up.
WAITING = frozenset({S.VALIDATING_FILES, S.QUEUED})
WAITING_VALUES = sorted(status.value for status in WAITING)  # for SQL `IN (...)`


def can_move(source: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED_MOVES[source]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    return frozenset(source for source, moves in ALLOWED_MOVES.items() if target in moves)


def transition(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    only_from: frozenset[JobStatus] | set[JobStatus] | None = None,
    **values: Any,
) -> bool:
    """Move the job to `target` if its current status allows it; True when this call moved it.

    `only_from` narrows the allowed sources (e.g. the worker finishing only from `running`).
    `values` are other columns written in the same statement.
    """
    sources = sources_of(target)
    if only_from is not None:
        sources = sources & frozenset(only_from)
    if not sources:
        return False
    result = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.status.in_([s.value for s in sources]))
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    moved = result.rowcount == 1  # type: ignore[attr-defined]
    if moved:
        # Keep any loaded instance in step with the row we just wrote.
        job = session.get(FineTuningJob, job_id, populate_existing=True)
        assert job is not None
    return moved
