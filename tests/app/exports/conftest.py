"""Two models trained by a real worker, once per backend, for the export and import tests: a
LoRA adapter and a full fine-tune of the tiny test model, trained long enough to answer the
dataset's questions with clear margins (so greedy answers compare across exports)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl

TINY = "tuna-tiny-test"


@dataclass(frozen=True)
class Trained:
    api_key: str
    lora: str
    full: str


def _train(client: openai.OpenAI, training_type: str) -> str:
    training_file = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12)), "application/jsonl"),
        purpose="fine-tune",
    ).id
    hyperparameters = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 4.0}
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=training_file,
        suffix=training_type,
        seed=7,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {**hyperparameters, "training_type": training_type}},
        },
        extra_body={"auto_eval": False},
    )
    deadline = time.monotonic() + 300
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in {
        "succeeded",
        "failed",
        "cancelled",
    }:
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model
    return job.fine_tuned_model


@pytest.fixture(scope="session")
def trained(server: LiveServer, worker: WorkerProcess) -> Iterator[Trained]:
    api_key = server.new_key()
    client = server.client(api_key)
    yield Trained(api_key, _train(client, "lora"), _train(client, "full"))
