"""A running job's lease, renewed from a thread while training holds the main one.

A worker that dies (SIGKILL, OOM, node reboot) stops renewing; within a lease period a
reconciler notices and puts the job back in the queue (`JobLifecycle.requeue_lost`).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from app.db import Database
from app.fine_tuning.repository import FineTuningRepository
from app.orm.base import utcnow

logger = logging.getLogger("tuna.worker")


class Heartbeat:
    def __init__(self, database: Database, job_id: str, worker_id: str, lease: timedelta) -> None:
        self.db = database
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease = lease
        self.every_seconds = lease.total_seconds() / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def renew(self) -> None:
        with self.db.session_scope() as session:
            FineTuningRepository(session).renew_lease(
                self.job_id, self.worker_id, utcnow() + self.lease
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                self.renew()
            except Exception:  # a DB hiccup must not kill training; the next beat retries
                logger.warning("lease renewal failed for %s", self.job_id, exc_info=True)
