"""Continued training end to end on the tiny model: a job whose `model` is an `ft:` model (or a
checkpoint) trains from its weights and publishes a model named after the original base; a job
whose source files are gone fails saying so."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.app.fine_tuning.conftest import add_fine_tuned_model
from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, create_job, upload, wait_for

BASE = "tuna-tiny-test"


def continue_job(client: openai.OpenAI, model: str, training_file: str, **hyperparameters):
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        seed=3,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4, **hyperparameters}},
        },
    )


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_a_fine_tuned_model_and_a_checkpoint_train_further(
    client: openai.OpenAI, worker: WorkerProcess, training_type: str
) -> None:
    training = upload(client, chat_jsonl(12))
    first = wait_for(client, create_job(client, training, training_type=training_type).id, TERMINAL)
    assert first.status == "succeeded", first.error
    assert first.fine_tuned_model is not None
    checkpoint = list(client.fine_tuning.jobs.checkpoints.list(first.id))[-1]
    for source in (first.fine_tuned_model, checkpoint.fine_tuned_model_checkpoint):
        job = continue_job(client, source, training)
        assert job.model == source
        done = wait_for(client, job.id, TERMINAL)
        assert done.status == "succeeded", done.error
        assert done.model == source
        assert done.fine_tuned_model is not None
        assert done.fine_tuned_model.startswith(f"ft:{BASE}:")  # named after the original base
        shown = done.to_dict()["method"]["supervised"]["hyperparameters"]
        assert shown["training_type"] == training_type  # the source's, when not given
        answer = client.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "What is 2 plus 2?"}],
            max_tokens=4,
        )
        assert answer.model == done.fine_tuned_model and answer.choices[0].message is not None


def test_a_lora_model_continued_as_full_is_merged(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    training = upload(client, chat_jsonl(12))
    first = wait_for(client, create_job(client, training).id, TERMINAL)
    assert first.status == "succeeded", first.error
    assert first.fine_tuned_model is not None
    job = continue_job(client, first.fine_tuned_model, training, training_type="full")
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert any("merged in" in e.message for e in all_events(client, job.id))


def test_a_source_whose_files_are_gone_fails_the_job(
    server: LiveServer, worker: WorkerProcess
) -> None:
    name = f"org-{uuid.uuid4().hex[:10]}"
    client = server.client(server.new_key(name))
    source = add_fine_tuned_model(server, name)  # a row whose folder was never written
    job = continue_job(client, source, upload(client, chat_jsonl(12)))
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "failed"
    assert done.error is not None
    assert (done.error.code, done.error.param) == ("model_not_found", "model")
    assert done.error.message == (
        f"The model {source} that this job continues training no longer exists: its files "
        "were deleted."
    )
