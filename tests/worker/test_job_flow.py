"""Jobs end to end: the official SDK against the API, a real Celery worker process training.

Runs on both backends: SQLite + the folder broker (embedded) and Postgres + Redis (production).
The tiny random llama keeps each job to seconds; one slow test uses the bundled SmolLM2.
"""

from __future__ import annotations

import csv
import io
import json
import time

import openai

from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl

TERMINAL = {"succeeded", "failed", "cancelled"}


def upload(client: openai.OpenAI, content: bytes) -> str:
    return client.files.create(file=("train.jsonl", io.BytesIO(content)), purpose="fine-tune").id


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job stuck in {job.status}")
        time.sleep(0.5)


def all_events(client: openai.OpenAI, job_id: str):
    return list(client.fine_tuning.jobs.list_events(job_id, limit=7))  # small pages: paging too


def create_job(client: openai.OpenAI, training_file: str, **hyperparameters):
    return client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=training_file,
        suffix="adder",
        seed=42,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, **hyperparameters}},
        },
    )


def test_job_trains_and_publishes_a_model(client: openai.OpenAI, worker: WorkerProcess) -> None:
    job = create_job(client, upload(client, chat_jsonl(20)))
    assert job.status == "validating_files"

    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.fine_tuned_model.startswith("ft:tuna-tiny-test:")
    assert done.fine_tuned_model.split(":")[3] == "adder"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 4
    assert done.finished_at is not None

    events = all_events(client, job.id)
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"  # newest first
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 10  # 20 examples / 4 per batch x 2 epochs
    steps = sorted(e.data["step"] for e in metrics)
    assert steps == list(range(1, 11))
    assert all("train_loss" in e.data and "train_mean_token_accuracy" in e.data for e in metrics)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [10, 5]  # one per epoch, newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-10"

    (results_id,) = done.result_files
    assert client.files.retrieve(results_id).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(results_id).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert set(rows[0]) == {
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    }

    model_ids = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in model_ids
    assert checkpoints[1].fine_tuned_model_checkpoint in model_ids


def test_validation_file_reports_validation_metrics(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=upload(client, chat_jsonl(12)),
        validation_file=upload(client, chat_jsonl(10)),
        seed=1,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    assert any("valid_loss" in m for m in metrics)
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert "full_valid_loss" in checkpoint.metrics.model_dump(exclude_none=True)


def test_too_few_examples_fails_with_openai_code(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, upload(client, chat_jsonl(7)))
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "invalid_n_examples"
    assert done.error.param == "training_file"
    assert "has 7 example(s), but must have at least 10" in done.error.message


def test_a_file_the_upload_accepts_trains(client: openai.OpenAI, worker: WorkerProcess) -> None:
    """Per-example metadata, a BOM, blank lines, text parts and context-only answers: every
    line the upload accepted, the worker trains on (the two check with one schema)."""
    lines = [json.loads(line) for line in chat_jsonl(12).decode().splitlines()]
    for i, example in enumerate(lines):
        example["metadata"] = {"source": "test", "row": i}
    lines[3]["messages"][0]["content"] = [
        {"type": "text", "text": "What is 3 "},
        {"type": "text", "text": "plus 3?"},
    ]
    lines[5]["messages"][1:1] = [
        {"role": "assistant", "content": "Let me think.", "weight": 0},
        {"role": "user", "content": "Go on."},
    ]
    content = "\ufeff" + "\n\n".join(json.dumps(line) for line in lines) + "\n"
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(content.encode())), purpose="fine-tune"
    )
    assert uploaded.status == "processed"
    done = wait_for(client, create_job(client, uploaded.id).id, TERMINAL)
    assert done.status == "succeeded", done.error


def test_a_bad_line_is_named_by_its_example_and_line(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    # Uploaded before the schema was shared (or by a store written by hand), the worker still
    # refuses it with the upload's own words, once: "Example 2 (line 3): messages[1]...".
    lines = chat_jsonl(12).decode().splitlines()
    lines[1] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    lines.insert(1, "")
    file_id = upload(client, chat_jsonl(12))
    server_file = worker.settings.resolved_storage_dir
    stored = next(p for p in server_file.rglob("*") if p.is_file() and file_id in p.name)
    stored.write_text("\n".join(lines) + "\n")
    done = wait_for(client, create_job(client, file_id).id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file"
    assert done.error.message == (
        "Invalid file format. Example 2 (line 3): messages[1].content: missing"
    )


def test_example_longer_than_context_is_named(client: openai.OpenAI, worker: WorkerProcess) -> None:
    lines = chat_jsonl(12).decode().splitlines()
    long_answer = " ".join(["word"] * 5000)
    lines[4] = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "talk"},
                {"role": "assistant", "content": long_answer},
            ]
        }
    )
    job = create_job(client, upload(client, "\n".join(lines).encode()))
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file"
    assert "Example 5" in done.error.message


def test_cancel_while_running(client: openai.OpenAI, worker: WorkerProcess) -> None:
    job = create_job(client, upload(client, chat_jsonl(40)), n_epochs=30, batch_size=1)
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id)):
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.3)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(3)  # the worker notices within a second or two and stops
    steps_then = len(
        [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    )
    time.sleep(2)
    final = client.fine_tuning.jobs.retrieve(job.id)
    steps_now = len(
        [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    )
    assert final.status == "cancelled" and final.fine_tuned_model is None
    assert steps_now == steps_then < 1200


def test_duplicate_delivery_is_harmless(
    server: LiveServer, client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, upload(client, chat_jsonl(12)))
    for _ in range(2):  # the API enqueued it once already: three deliveries in all
        server.app.state.job_queue.enqueue(job.id)
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    time.sleep(2)  # let the extra deliveries run into the finished job
    messages = [e.message for e in all_events(client, job.id)]
    assert messages.count("Fine-tuning job started") == 1
    assert messages.count("The job has successfully completed") == 1
    assert len([m for m in client.models.list() if m.id == done.fine_tuned_model]) == 1


def test_training_failure_surfaces_as_failed(client: openai.OpenAI, worker: WorkerProcess) -> None:
    """A learning rate so large that the loss turns NaN is refused by the engine, readably."""
    job = create_job(
        client, upload(client, chat_jsonl(12)), training_type="full", learning_rate_multiplier=1e12
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error.code == "training_diverged"
    assert "learning_rate_multiplier" in done.error.message
    assert "Traceback" not in done.error.message
    assert done.fine_tuned_model is None
    assert next(e.level for e in all_events(client, job.id)) == "error"
