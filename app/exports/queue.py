"""What the API needs from the queue for exports: hand over a committed export's id.

`worker.celery_app.CeleryJobQueue.enqueue_export` sends it to `BUILD_EXPORT_TASK`.
"""

from __future__ import annotations

from typing import Protocol


class ExportQueue(Protocol):
    def enqueue_export(self, export_id: str) -> None: ...
