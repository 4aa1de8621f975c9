"""Models trained by the real worker through the jobs API answer, without restarting the API."""

from __future__ import annotations

import io

import openai
import pytest

from tests.conftest import WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, wait_for

MESSAGES = [{"role": "user", "content": "What is 3 plus 3?"}]


# One backend is enough here: resolution is the same code on both (the chat tests run on both),
# and the jobs path on Postgres + Redis is tested in tests/worker.
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_trained_model_and_checkpoint_answer(client: openai.OpenAI, worker: WorkerProcess) -> None:
    # The server was started (session fixture) before this job existed: the new ft: id and its
    # checkpoint are found in the database per request, and loaded on first use.
    training_file = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    ).id
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=training_file,
        suffix="infer",
        seed=3,
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    checkpoints = [
        c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)
    ]
    assert checkpoints and all(":ckpt-step-" in c for c in checkpoints)

    for model in (done.fine_tuned_model, checkpoints[-1]):
        reply = client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=4,
            temperature=0,  # type: ignore[arg-type]
        )
        assert reply.model == model
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 4
