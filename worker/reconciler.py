"""The database is the source of truth: every job that needs a worker gets a message.

Three ways a job can be left without one, and what each pass does about it:

* its worker died (SIGKILL, OOM, reboot): the lease runs out; the job goes back to `queued`;
* the API died, or the broker refused, between committing the job and sending its message:
  `enqueued_at` stays empty; after a grace period the job is sent;
* the broker lost its messages (Redis restarted without persistence): `BrokerMemory` says so;
  every waiting job is sent again.

Eval runs (`app/evals`) are watched the same three ways when the reconciler is given
`send_eval_run`: an expired lease puts an in-progress run back to `queued` (the next attempt
skips the items already written), and queued runs without a known message are sent.

Given `deliver_webhooks`, each pass also posts the webhook deliveries that are due (the
outbox of `app.webhooks`), so none waits on a message that was lost.

A job's right to be sent is taken with a conditional UPDATE of `enqueued_at`, so of several
workers' reconcilers only one sends an unsent job; a broker's loss is reported to one reconciler
only (`BrokerMemory`). A duplicate message is harmless anyway: claims are atomic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from app.db import Database
from app.evals.repository import EvalRepository
from app.fine_tuning.lifecycle import JobLifecycle
from app.fine_tuning.repository import FineTuningRepository
from app.orm.base import utcnow
from worker.broker_memory import BrokerMemory, NoMemory

logger = logging.getLogger("tuna.worker")

# How long the API has to send a new job's message itself before a reconciler does.
UNSENT_GRACE = timedelta(seconds=10)


class Reconciler:
    def __init__(
        self,
        database: Database,
        send: Callable[[str], None],
        memory: BrokerMemory | None = None,
        grace: timedelta = UNSENT_GRACE,
        *,
        send_eval_run: Callable[[str], None] | None = None,
        deliver_webhooks: Callable[[], object] | None = None,
    ) -> None:
        self.db = database
        self.send = send
        self.send_eval_run = send_eval_run
        self.deliver_webhooks = deliver_webhooks
        self.memory = memory or NoMemory()
        self.grace = grace

    def run_once(self, *, resend_waiting: bool = False) -> list[str]:
        """One pass; returns the ids sent (jobs', then eval runs'). `resend_waiting` re-sends
        every waiting job and run."""
        now = utcnow()
        with self.db.session_scope() as session:
            lifecycle = JobLifecycle(session)
            for job_id in lifecycle.jobs.expired_leases(now):
                lifecycle.requeue_lost(job_id)
            if self.send_eval_run is not None:
                runs = EvalRepository(session)
                for run_id in runs.expired_run_leases(now):
                    if runs.requeue_lost_run(run_id):
                        logger.warning("worker lost; eval run %s returned to the queue", run_id)
        broker_forgot = self.memory.forgot()
        resend_waiting = resend_waiting or broker_forgot
        with self.db.session_scope() as session:
            jobs = FineTuningRepository(session)
            candidates = jobs.waiting_jobs(
                unsent_before=None if resend_waiting else now - self.grace
            )
            if broker_forgot and candidates:  # a new broker, with nothing waiting, lost nothing
                logger.warning(
                    "the broker lost its messages; re-sending %d waiting job(s)", len(candidates)
                )
            claimed = [
                job_id
                for job_id in candidates
                if jobs.mark_enqueued(job_id, now, only_if_unsent=not resend_waiting)
            ]
        sent = []
        for job_id in claimed:
            try:
                self.send(job_id)
            except Exception:
                logger.warning("could not enqueue %s; the next pass retries", job_id, exc_info=True)
                with self.db.session_scope() as session:
                    FineTuningRepository(session).unmark_enqueued(job_id, now)
                continue
            logger.info("enqueued %s", job_id)
            sent.append(job_id)
        if self.send_eval_run is not None:
            sent += self._send_eval_runs(self.send_eval_run, now, resend_waiting)
        if self.deliver_webhooks is not None:
            try:
                self.deliver_webhooks()
            except Exception:
                logger.warning("webhook delivery failed; the next pass retries", exc_info=True)
        return sent

    def _send_eval_runs(
        self, send: Callable[[str], None], now: datetime, resend_waiting: bool
    ) -> list[str]:
        """The same outbox pass for queued eval runs."""
        with self.db.session_scope() as session:
            runs = EvalRepository(session)
            candidates = runs.waiting_runs(
                unsent_before=None if resend_waiting else now - self.grace
            )
            claimed = [
                run_id
                for run_id in candidates
                if runs.claim_run_send(run_id, now, only_if_unsent=not resend_waiting)
            ]
        sent = []
        for run_id in claimed:
            try:
                send(run_id)
            except Exception:
                logger.warning("could not enqueue %s; the next pass retries", run_id, exc_info=True)
                with self.db.session_scope() as session:
                    EvalRepository(session).unmark_run_enqueued(run_id, now)
                continue
            logger.info("enqueued %s", run_id)
            sent.append(run_id)
        return sent
