"""Pause and resume through a real worker, and a training file deleted under a waiting job."""

from __future__ import annotations

import re
import time

import openai

from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, create_job, upload, wait_for


def metric_steps(client: openai.OpenAI, job_id: str) -> list[int]:
    return [e.data["step"] for e in all_events(client, job_id) if e.type == "metrics"]


def test_pause_then_resume_continues_where_it_stopped(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, upload(client, chat_jsonl(30)), n_epochs=3, batch_size=1)
    deadline = time.monotonic() + 120
    while len(metric_steps(client, job.id)) < 5:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.3)

    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    time.sleep(3)  # the worker notices within a second, saves a checkpoint and stops
    steps_when_paused = metric_steps(client, job.id)
    time.sleep(2)
    assert metric_steps(client, job.id) == steps_when_paused
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert sorted(metric_steps(client, job.id)) == list(range(1, 91))  # each step once
    messages = [e.message for e in all_events(client, job.id)]
    assert any(re.fullmatch(r"Resumed from step \d+ \(attempt 2\)", m) for m in messages)


def test_training_file_deleted_before_the_worker_starts(
    server: LiveServer, client: openai.OpenAI, worker: WorkerProcess
) -> None:
    """Deleting a file a waiting job uses is allowed; the job then fails saying why."""
    real_queue = server.app.state.job_queue
    held: list[str] = []
    server.app.state.job_queue = type("Held", (), {"enqueue": lambda self, i: held.append(i)})()
    try:
        training_file = upload(client, chat_jsonl(12))
        job = create_job(client, training_file)
        client.files.delete(training_file)
    finally:
        server.app.state.job_queue = real_queue
    real_queue.enqueue(held[0])
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.param == "training_file"
    assert "deleted" in done.error.message
