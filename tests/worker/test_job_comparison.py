"""A job with a validation file compares its models on it when it succeeds, with no extra call.

Through the official SDK against a real worker, on both backends: the job object's `eval` shows
the starting model, each checkpoint and the final model with exact match, similarity and
validation loss, the best fine-tuned one marked; the table is written once as an event; the
eval and its runs are ordinary Evals API objects; a job that opts out gets none.
"""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any

import openai
import pytest

from tests.conftest import WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, upload, wait_for

pytestmark = pytest.mark.slow


def job_eval(client: openai.OpenAI, job_id: str, timeout: float = 300) -> dict[str, Any]:
    """The job's `eval` once every run of its comparison has ended."""
    deadline = time.monotonic() + timeout
    while True:
        shown = client.fine_tuning.jobs.retrieve(job_id).to_dict().get("eval")
        if shown and shown["status"] not in ("queued", "in_progress"):
            return shown  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"comparison stuck: {shown}"
        time.sleep(0.5)


def create_job(client: openai.OpenAI, model: str = "tuna-tiny-test", **extra: Any) -> Any:
    return client.fine_tuning.jobs.create(
        model=model,
        training_file=upload(client, chat_jsonl(20)),
        validation_file=client.files.create(
            file=("valid.jsonl", io.BytesIO(chat_jsonl(6))), purpose="fine-tune"
        ).id,
        seed=5,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
        **extra,
    )


def test_a_succeeded_job_shows_base_checkpoints_and_final(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, extra_body={"auto_eval": {"max_items": 4}})
    assert job.to_dict()["auto_eval"] == {"enabled": True, "max_items": 4}
    assert job.to_dict()["eval"] is None
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error

    table = job_eval(client, job.id)
    assert table["status"] == "completed"
    assert table["items"] == 4  # capped by max_items: the file has 6
    rows = table["rows"]
    # 20 examples / 4 per batch x 2 epochs: checkpoints at steps 5 and 10; 10 is the final model.
    assert [(r["label"], r["role"], r["step"]) for r in rows] == [
        ("base", "base", 0),
        ("step 5", "checkpoint", 5),
        ("final", "final", 10),
    ]
    assert [r["model"] for r in rows] == [
        "tuna-tiny-test",
        f"{done.fine_tuned_model}:ckpt-step-5",
        done.fine_tuned_model,
    ]
    for row in rows:
        assert row["status"] == "completed"
        assert 0.0 <= row["exact_match"] <= 1.0
        assert 0.0 <= row["similarity"] <= 1.0
        assert math.isfinite(row["valid_loss"])
    # Training moved the loss: the final model's is not the starting model's.
    assert rows[2]["valid_loss"] != rows[0]["valid_loss"]
    (best,) = [r for r in rows if r["best"]]
    assert best["role"] != "base" and table["best_model"] == best["model"]

    # The table is also the job's event, written exactly once.
    reports = [e for e in all_events(client, job.id) if e.message.startswith("Evaluation on")]
    assert len(reports) == 1
    assert reports[0].data["eval"]["rows"] == rows
    assert f"Best: {best['label']}" in reports[0].message

    # It is an ordinary eval: its runs, prompted with each item's own conversation.
    evaluation = client.evals.retrieve(table["id"])
    assert evaluation.metadata == {"fine_tuning_job": job.id}
    runs = sorted(client.evals.runs.list(table["id"]), key=lambda r: r.created_at)
    assert [r.id for r in runs] == [r["run_id"] for r in rows]
    assert runs[1].metadata["role"] == "checkpoint" and runs[1].metadata["step"] == "5"
    source = runs[0].data_source.to_dict()
    assert source["input_messages"] == {"type": "item_reference", "item_reference": "item.input"}
    items = list(client.evals.runs.output_items.list(runs[2].id, eval_id=table["id"]))
    assert len(items) == 4
    first = min(items, key=lambda i: i.datasource_item_id)
    assert first.datasource_item["expected"] == "0"  # "What is 0 plus 0?" -> "0"
    assert first.sample.input[-1].content == "What is 0 plus 0?"


def test_a_job_that_opts_out_gets_no_comparison(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    job = create_job(client, extra_body={"auto_eval": False})
    assert job.to_dict()["auto_eval"] == {"enabled": False, "max_items": 100}
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.to_dict()["eval"] is None
    assert not any("evaluation" in e.message.lower() for e in all_events(client, job.id))
    assert not [e for e in client.evals.list() if (e.metadata or {}).get("fine_tuning_job")]


def test_a_validation_set_with_nothing_to_compare_is_skipped_with_a_warning(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    """Prompt/completion lines are no chat: the job succeeds and says why it compared nothing."""
    lines = [{"prompt": f"{i} plus {i} is", "completion": f" {2 * i}"} for i in range(12)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    files = [
        client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune").id
        for name in ("train.jsonl", "valid.jsonl")
    ]
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=files[0],
        validation_file=files[1],
        seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    assert job.to_dict()["auto_eval"]["enabled"] is True
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert done.to_dict()["eval"] is None
    (skipped,) = [e for e in all_events(client, job.id) if "automatic evaluation" in e.message]
    assert skipped.level == "warn"
    assert "no validation example ends in a text answer" in skipped.message


def test_a_continued_job_whose_starting_model_is_deleted_compares_the_rest(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    first = wait_for(client, create_job(client, extra_body={"auto_eval": False}).id, TERMINAL)
    assert first.status == "succeeded", first.error
    continued = create_job(
        client, model=first.fine_tuned_model, extra_body={"auto_eval": {"max_items": 2}}
    )
    deadline = time.monotonic() + 180
    while not any(e.type == "metrics" for e in all_events(client, continued.id)):
        assert time.monotonic() < deadline, "the continued job did not start training"
        time.sleep(0.2)
    client.models.delete(first.fine_tuned_model)  # its weights are loaded already

    done = wait_for(client, continued.id, TERMINAL)
    assert done.status == "succeeded", done.error
    table = job_eval(client, continued.id)
    assert [r["role"] for r in table["rows"]] == ["checkpoint", "final"]
    assert table["status"] == "completed"
    warnings = [e.message for e in all_events(client, continued.id) if e.level == "warn"]
    assert any("was deleted: the comparison leaves it out" in m for m in warnings), warnings
