"""What the API needs from the queue for eval runs: hand over a committed run's id.

`worker.celery_app.CeleryJobQueue.enqueue_eval_run` sends it to `RUN_EVAL_TASK`.
"""

from __future__ import annotations

from typing import Protocol


class EvalRunQueue(Protocol):
    def enqueue_eval_run(self, run_id: str) -> None: ...
