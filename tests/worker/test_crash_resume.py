"""A worker SIGKILLed mid-job: the lease expires, a new worker resumes from the last checkpoint.

This test owns its server and workers (not the session's), so it knows which process runs the
job and can kill it. The final loss must equal an uninterrupted run with the same seed.
"""

from __future__ import annotations

import re
import time

import openai
import pytest

from tests.conftest import LiveServer, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl, preference_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, upload, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def isolated(tmp_path):
    # Long enough that a live worker's heartbeat (every quarter lease) is never missed for a
    # whole lease on this loaded 2-core machine while torch.compile runs beside the suite, short
    # enough that the killed worker's job is noticed quickly.
    settings = make_settings(tmp_path / "data", None, job_lease_seconds=10.0)
    from app.bootstrap import prepare
    from app.main import create_app

    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    workers: list[WorkerProcess] = []

    def new_worker() -> WorkerProcess:
        process = WorkerProcess(settings, tmp_path / f"worker-{len(workers)}.log")
        process.start()
        workers.append(process)
        return process

    yield live, new_worker
    for process in workers:
        process.stop()
    stop()


def metrics_of(client: openai.OpenAI, job_id: str) -> list[dict]:
    return sorted(
        (e.data for e in all_events(client, job_id) if e.type == "metrics"),
        key=lambda m: m["step"],
    )


@pytest.mark.parametrize("method", ["supervised", "dpo"])
def test_sigkilled_worker_job_resumes_and_matches_uninterrupted_run(isolated, method) -> None:
    """For DPO the resumed attempt must also reuse the reference log-probs of the checkpoint:
    recomputed from the trained weights, every later loss would differ."""
    live, new_worker = isolated
    client = live.client(live.new_key())
    data = chat_jsonl(24) if method == "supervised" else preference_jsonl(24)
    training_file = upload(client, data)

    def create():
        return client.fine_tuning.jobs.create(
            model="tuna-tiny-test",
            training_file=training_file,
            seed=7,
            method={"type": method, method: {"hyperparameters": {"n_epochs": 4, "batch_size": 2}}},
        )

    first_worker = new_worker()
    job = create()
    # Kill once the first epoch's checkpoint exists and the second epoch is under way.
    deadline = time.monotonic() + 180
    while True:
        steps = [m["step"] for m in metrics_of(client, job.id)]
        if steps and max(steps) >= 15:
            break
        assert time.monotonic() < deadline, "training did not progress"
        time.sleep(0.2)
    first_worker.kill()
    killed_at = max(m["step"] for m in metrics_of(client, job.id))
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # nobody told it yet

    new_worker()
    done = wait_for(client, job.id, TERMINAL, timeout=240)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in all_events(client, job.id)]
    resumed = [re.fullmatch(r"Resumed from step (\d+) \(attempt 2\)", m) for m in messages]
    (step,) = [int(match.group(1)) for match in resumed if match]
    assert sum(m.startswith("Resumed") for m in messages) == 1, messages  # one per resume
    assert sum(m.startswith("Worker lost") for m in messages) == 1, messages  # the kill only
    assert step % 12 == 0 and 12 <= step <= killed_at  # the last epoch checkpoint
    steps = [m["step"] for m in metrics_of(client, job.id)]
    assert steps == list(range(1, 49)), f"killed at {killed_at}; steps {steps}"

    reference = wait_for(client, create().id, TERMINAL, timeout=240)
    assert reference.status == "succeeded"
    resumed_losses = [m["train_loss"] for m in metrics_of(client, job.id)]
    reference_losses = [m["train_loss"] for m in metrics_of(client, reference.id)]
    assert resumed_losses == pytest.approx(reference_losses, rel=1e-4, abs=1e-5)
    if method == "dpo":
        assert {"train_reward_accuracy", "train_reward_margin"} <= set(
            metrics_of(client, job.id)[-1]
        )
        assert sum("reference model" in m for m in messages) == 1  # computed once, then kept
