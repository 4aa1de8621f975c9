"""The Celery application: one training queue, one job per worker process at a time.

Embedded default: kombu's `filesystem://` transport over folders under the data dir, so
`tuna serve` needs no broker server. Production: `TUNA_BROKER_URL=redis://...`.
Late acks + prefetch 1 mean a worker that dies mid-job leaves the message to be redelivered,
and the task's conditional claim makes a duplicate delivery harmless.
"""

from __future__ import annotations

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB_TASK = "tuna.run_job"
# An eval run's id (`app/evals`); the run must be committed `queued` before it is sent.
RUN_EVAL_TASK = "tuna.run_eval"
# No arguments: post every due webhook delivery (`worker.webhooks`); sent after an event commits.
DELIVER_WEBHOOKS_TASK = "tuna.deliver_webhooks"
# A model export's id (`app/exports`): merge and/or convert a fine-tuned model for download.
BUILD_EXPORT_TASK = "tuna.build_export"


def make_celery(settings: Settings) -> Celery:
    celery = Celery("tuna", broker=settings.resolved_broker_url, include=["worker.tasks"])
    conf: dict[str, object] = {
        "task_default_queue": settings.training_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.resolved_broker_url.startswith("filesystem://"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # Without this kombu writes its control exchange into the current directory.
            "control_folder": str(folder / "control"),
        }
    if settings.resolved_broker_url.startswith("redis"):
        # Redelivery after a lost worker; our own lease catches dead jobs long before this.
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    celery.conf.update(conf)
    return celery


celery_app = make_celery(get_settings())


class CeleryJobQueue:
    """What the API uses to hand a committed job's id to the workers."""

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.celery = celery or make_celery(settings)
        self.queue = settings.training_queue

    def enqueue(self, job_id: str) -> None:
        self.celery.send_task(RUN_JOB_TASK, args=[job_id], queue=self.queue)

    def enqueue_eval_run(self, run_id: str) -> None:
        self.celery.send_task(RUN_EVAL_TASK, args=[run_id], queue=self.queue)

    def enqueue_export(self, export_id: str) -> None:
        self.celery.send_task(BUILD_EXPORT_TASK, args=[export_id], queue=self.queue)

    def nudge_webhooks(self) -> None:
        self.celery.send_task(DELIVER_WEBHOOKS_TASK, queue=self.queue)
