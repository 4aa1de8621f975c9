"""Celery tasks: the adapter between the queue, the database and the training engine.

`run_job` may be delivered twice, or after the job was cancelled: every status change goes
through the state machine's conditional update, and a task that loses a race just returns.
`run_eval` likewise for an eval run (`worker.eval_runs`); its inference engine is created once
per worker process and kept, with its loaded models, for the next run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import lru_cache

from celery.signals import worker_ready

from app.config import get_settings
from app.db import Database
from app.files.storage import LocalStorage
from app.inference.engine import InferenceEngine, create_engine
from app.webhooks.outbox import install_nudge
from worker.broker_memory import broker_memory
from worker.celery_app import (
    BUILD_EXPORT_TASK,
    DELIVER_WEBHOOKS_TASK,
    RUN_EVAL_TASK,
    RUN_JOB_TASK,
    CeleryJobQueue,
    celery_app,
)
from worker.eval_runs import EvalRunner
from worker.model_exports import ExportBuilder
from worker.reconciler import Reconciler
from worker.runner import JobRunner
from worker.webhooks import WebhookDeliverer

logger = logging.getLogger("tuna.worker")


def _database() -> Database:
    """A database whose sessions nudge webhook delivery after committing an event."""
    settings = get_settings()
    database = Database(settings.resolved_database_url)
    install_nudge(database, CeleryJobQueue(settings, celery_app).nudge_webhooks)
    return database


@lru_cache
def _runner() -> JobRunner:
    settings = get_settings()
    return JobRunner(
        settings=settings,
        database=_database(),
        storage=LocalStorage(settings.resolved_storage_dir),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        eval_queue=CeleryJobQueue(settings, celery_app),
    )


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> None:
    _runner().run(job_id)


@lru_cache
def _engine() -> InferenceEngine:
    """Created at the first eval run in this process (after the fork), loaded lazily."""
    settings = get_settings()
    return create_engine(settings, LocalStorage(settings.resolved_storage_dir))


@lru_cache
def _eval_runner() -> EvalRunner:
    settings = get_settings()
    return EvalRunner(
        settings=settings,
        database=_database(),
        storage=LocalStorage(settings.resolved_storage_dir),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        engine=_engine,
    )


@celery_app.task(name=RUN_EVAL_TASK, acks_late=True, reject_on_worker_lost=True)
def run_eval(run_id: str) -> None:
    _eval_runner().run(run_id)


@lru_cache
def _export_builder() -> ExportBuilder:
    settings = get_settings()
    return ExportBuilder(
        settings,
        _database(),
        LocalStorage(settings.resolved_storage_dir),
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
    )


@celery_app.task(name=BUILD_EXPORT_TASK, acks_late=True, reject_on_worker_lost=True)
def build_export(export_id: str) -> None:
    _export_builder().run(export_id)


@lru_cache
def _deliverer() -> WebhookDeliverer:
    settings = get_settings()
    return WebhookDeliverer(settings, Database(settings.resolved_database_url))


@celery_app.task(name=DELIVER_WEBHOOKS_TASK, acks_late=True)
def deliver_webhooks() -> None:
    _deliverer().deliver_due()


def _deliver_forever(deliverer: WebhookDeliverer, every_seconds: float) -> None:
    """Besides the message sent after each event: a pool busy training cannot run that task."""
    while True:
        time.sleep(every_seconds)
        try:
            deliverer.deliver_due()
        except Exception:
            logger.warning("webhook delivery pass failed", exc_info=True)


def _reconcile_forever(reconciler: Reconciler, every_seconds: float) -> None:
    while True:
        time.sleep(every_seconds)
        try:
            reconciler.run_once()
        except Exception:
            logger.warning("reconcile failed", exc_info=True)


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    """On start: re-send every waiting job (a broker we cannot look into may have lost them,
    and a worker that died mid-validation holds no lease); then keep watching."""
    settings = get_settings()
    queue = CeleryJobQueue(settings, celery_app)
    database = Database(settings.resolved_database_url)
    deliverer = WebhookDeliverer(settings, database)
    reconciler = Reconciler(
        database,
        queue.enqueue,
        broker_memory(settings),
        send_eval_run=queue.enqueue_eval_run,
        deliver_webhooks=deliverer.deliver_due,
    )
    reconciler.run_once(resend_waiting=True)
    threading.Thread(
        target=_reconcile_forever,
        args=(reconciler, settings.job_lease_seconds / 2),
        daemon=True,
        name="tuna-reconciler",
    ).start()
    threading.Thread(
        target=_deliver_forever,
        args=(deliverer, settings.webhook_poll_seconds),
        daemon=True,
        name="tuna-webhooks",
    ).start()
