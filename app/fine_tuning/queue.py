"""What the API needs from the job queue: hand over a committed job's id.

A protocol, so the API does not import Celery at module load and tests can record enqueues.
`worker.celery_app.CeleryJobQueue` is the production implementation.
"""

from __future__ import annotations

from typing import Protocol


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...
