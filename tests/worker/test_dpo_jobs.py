"""DPO jobs end to end through the official SDK and a real worker, on the tiny model: one on the
base model, one continuing a supervised fine-tune; both report DPO metrics, write the DPO results
file, and publish a model that answers chat requests."""

from __future__ import annotations

import csv
import io

import openai
import pytest

from tests.conftest import WorkerProcess
from tests.datasets import chat_jsonl, preference_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, create_job, upload, wait_for
from tuna_core.metrics import metric_names

pytestmark = pytest.mark.slow

BASE = "tuna-tiny-test"


def dpo_job(client: openai.OpenAI, model: str, training_file: str, validation_file: str):
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        suffix="prefs",
        seed=5,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )


def check_dpo_job(client: openai.OpenAI, job_id: str, model: str) -> None:
    done = wait_for(client, job_id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.model == model
    assert done.fine_tuned_model and done.fine_tuned_model.startswith(f"ft:{BASE}:")
    assert done.method is not None and done.method.type == "dpo"
    shown = done.to_dict()["method"]["dpo"]["hyperparameters"]
    assert (shown["beta"], shown["n_epochs"], shown["batch_size"]) == (0.1, 2, 4)

    metrics = [e for e in all_events(client, job_id) if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == list(range(1, 7))  # 12 pairs / 4 x 2
    for event in metrics:
        assert set(metric_names("dpo", "train")) <= set(event.data)
        assert "reward accuracy=" in event.message
    assert any("valid_reward_accuracy" in e.data for e in metrics)

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    assert [c.step_number for c in checkpoints] == [6, 3]
    measured = checkpoints[0].metrics.model_dump(exclude_none=True)
    assert "train_loss" in measured and "train_mean_token_accuracy" not in measured

    (results_id,) = done.result_files
    table = list(csv.reader(io.StringIO(client.files.content(results_id).text)))
    assert table[0] == ["step", *metric_names("dpo", "train"), *metric_names("dpo", "valid")]
    assert [int(row[0]) for row in table[1:]] == list(range(1, 7))

    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        max_tokens=4,
    )
    assert answer.model == done.fine_tuned_model
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_dpo_on_the_base_model_and_on_a_supervised_fine_tune(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    preferences = upload(client, preference_jsonl(12))
    validation = upload(client, preference_jsonl(4))
    on_base = dpo_job(client, BASE, preferences, validation)

    supervised = wait_for(client, create_job(client, upload(client, chat_jsonl(12))).id, TERMINAL)
    assert supervised.status == "succeeded", supervised.error
    assert supervised.fine_tuned_model is not None
    on_sft = dpo_job(client, supervised.fine_tuned_model, preferences, validation)

    check_dpo_job(client, on_base.id, BASE)
    check_dpo_job(client, on_sft.id, supervised.fine_tuned_model)
