"""Leases renewed from a thread while the main one works: a job's, an export's.

A worker that dies (SIGKILL, OOM, node reboot) stops renewing; within a lease period a
reconciler (or, for an export, the next download request) notices and puts the work back in
the queue (`JobLifecycle.requeue_lost`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from app.db import Database
from app.fine_tuning.repository import FineTuningRepository
from app.orm.base import utcnow

logger = logging.getLogger("tuna.worker")


class Lease:
    """Calls ``renew`` every quarter of ``lease`` until the ``with`` block ends."""

    def __init__(self, renew: Callable[[], None], lease: timedelta, name: str) -> None:
        self._renew = renew
        self.lease = lease
        self.every_seconds = lease.total_seconds() / 4
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                self._renew()
            except Exception:  # a DB hiccup must not kill the work; the next beat retries
                logger.warning("lease renewal failed for %s", self._name, exc_info=True)


class Heartbeat(Lease):
    """A running job's lease."""

    def __init__(self, database: Database, job_id: str, worker_id: str, lease: timedelta) -> None:
        self.db = database
        self.job_id = job_id
        self.worker_id = worker_id
        super().__init__(self.renew, lease, f"lease-{job_id}")

    def renew(self) -> None:
        with self.db.session_scope() as session:
            FineTuningRepository(session).renew_lease(
                self.job_id, self.worker_id, utcnow() + self.lease
            )
