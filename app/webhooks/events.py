"""The webhook event types, defined once: OpenAI's names first, then Tuna's own.

OpenAI sends `fine_tuning.job.{succeeded,failed,cancelled}` and `eval.run.{succeeded,failed,
canceled}` (its eval runs are "canceled", its jobs "cancelled"); Tuna adds a job's start and
its checkpoints.
"""

from __future__ import annotations

JOB_SUCCEEDED = "fine_tuning.job.succeeded"
JOB_FAILED = "fine_tuning.job.failed"
JOB_CANCELLED = "fine_tuning.job.cancelled"
JOB_RUNNING = "fine_tuning.job.running"
JOB_CHECKPOINT_CREATED = "fine_tuning.job.checkpoint.created"
EVAL_RUN_SUCCEEDED = "eval.run.succeeded"
EVAL_RUN_FAILED = "eval.run.failed"
EVAL_RUN_CANCELED = "eval.run.canceled"

EVENT_TYPES: tuple[str, ...] = (
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_RUNNING,
    JOB_CHECKPOINT_CREATED,
    EVAL_RUN_SUCCEEDED,
    EVAL_RUN_FAILED,
    EVAL_RUN_CANCELED,
)
