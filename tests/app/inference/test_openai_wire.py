"""The main flow end to end, every response checked against OpenAI's published schemas.

`tests/openai_wire.py` checks the responses of every test; this one makes sure the check has
something to check: each of OpenAI's objects is validated at least once, empty lists, stream
chunks and errors included, so the check cannot pass by validating nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import openai
import pytest
from sqlalchemy import select

from app.evals.repository import EvalRepository
from app.fine_tuning.repository import FineTuningRepository
from app.orm import FineTunedModel
from tests.app.evals.test_evals_api import SAMPLE
from tests.app.fine_tuning.conftest import RecordingQueue
from tests.app.inference.conftest import TINY, ModelFolders, Tenant, publish
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl
from tests.openai_wire import ROUTES, WIRE
from tuna_core.evals import expected_answer_criteria

MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
def held_queue(server: LiveServer) -> Iterator[RecordingQueue]:
    """Jobs created here never reach a broker, where a later test's worker would train them."""
    real = server.app.state.job_queue
    server.app.state.job_queue = queue = RecordingQueue(server.app.state.db)
    try:
        yield queue
    finally:
        server.app.state.job_queue = real


def job_of(server: LiveServer, model_id: str) -> str:
    with server.app.state.db.session_scope() as session:
        job_id = session.scalar(select(FineTunedModel.job_id).where(FineTunedModel.id == model_id))
    assert job_id
    return job_id


def record_training(server: LiveServer, tenant: Tenant, job_id: str, model_id: str) -> None:
    """What the worker records for a step without a validation file: a metrics event and a
    checkpoint whose metrics lack the validation numbers."""
    with server.app.state.db.session_scope() as session:
        jobs = FineTuningRepository(session)
        metrics = {"step": 2.0, "train_loss": 1.25, "train_mean_token_accuracy": 0.5}
        jobs.add_event(job_id, "Step 2/2: training loss=1.25", type="metrics", data=metrics)
        jobs.add_checkpoint(
            job_id=job_id,
            project_id=tenant.project_id,
            step_number=2,
            fine_tuned_model_checkpoint=f"{model_id}:ckpt-step-2",
            metrics=metrics,
            storage_key=f"jobs/{job_id}/checkpoints/step-2",
        )


def record_output_item(server: LiveServer, run_id: str) -> None:
    """One graded item, in the shape the eval worker writes."""
    with server.app.state.db.session_scope() as session:
        evals = EvalRepository(session)
        run = evals.get_run(run_id)
        assert run is not None
        evals.add_output_item(
            run,
            datasource_item_id=0,
            datasource_item={"q": "Say hi.", "a": "hi"},
            sample=SAMPLE,
            results=[{"name": "exact", "type": "string_check", "score": 1.0, "passed": True}],
            status="pass",
        )


def test_main_flow_matches_openai_schemas(
    server: LiveServer, tenant: Tenant, model_folders: ModelFolders, held_queue: RecordingQueue
) -> None:
    client = tenant.client
    WIRE.reset()

    # Files: an empty list first, then one with data.
    assert client.files.list().data == []
    training = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    )
    notes = client.files.create(
        file=("notes.txt", io.BytesIO(b"hello")),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert notes.expires_at is not None and training.expires_at is None
    assert [f.id for f in client.files.list().data] == [notes.id, training.id]
    assert client.files.retrieve(training.id).status == "processed"
    assert client.files.delete(notes.id).deleted

    # Jobs: an empty list, one job, its events and its (empty) checkpoints, then cancel it.
    assert client.fine_tuning.jobs.list().data == []
    job = client.fine_tuning.jobs.create(model=TINY, training_file=training.id, suffix="wire")
    assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    assert all(e.data == {} for e in client.fine_tuning.jobs.list_events(job.id).data)
    empty = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert (empty.data, empty.has_more) == ([], False)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as caught:  # a move the status does not allow
        client.fine_tuning.jobs.cancel(job.id)
    assert caught.value.code == "invalid_job_status"

    # A trained model: its metrics event and a checkpoint that has no validation metrics.
    model_id = publish(server, tenant, model_folders.adapter_a)
    trained_job = job_of(server, model_id)
    record_training(server, tenant, trained_job, model_id)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(trained_job).data[0]
    assert checkpoint.metrics.valid_loss is None and checkpoint.metrics.train_loss == 1.25
    assert client.fine_tuning.jobs.list_events(trained_job).data[0].type == "metrics"

    # Models.
    assert {TINY, model_id} <= {m.id for m in client.models.list().data}
    assert client.models.retrieve(model_id).id == model_id
    assert client.models.retrieve(TINY).id == TINY

    # Inference, whole and streamed, chat and text, with and without usage chunks.
    for model in (TINY, model_id):
        chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
        assert chat.choices[0].finish_reason in ("stop", "length")
        streamed = list(
            client.chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert streamed[-1].usage is not None
    list(client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=2, stream=True))  # type: ignore[arg-type]
    assert client.completions.create(model=model_id, prompt="Once", max_tokens=3).choices
    chunks = list(
        client.completions.create(
            model=TINY,
            prompt=["Once", "Twice"],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None

    # Errors: unknown id, bad parameter, token-id prompt, bad key, unknown route.
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TINY, messages=MESSAGES, n=100)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=TINY, prompt=[1, 2, 3], max_tokens=2)
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-not-a-key").models.list()
    with server.http(tenant.key) as http:
        assert http.get("/v1/no-such-thing").status_code == 404

    # Evals: an empty list, an eval, a (held) run, an output item as the worker writes it.
    assert client.evals.list().data == []
    items = client.files.create(
        file=("items.jsonl", io.BytesIO(b'{"q": "Say hi.", "a": "hi"}\n')), purpose="evals"
    )
    evaluation = client.evals.create(
        name="wire",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=expected_answer_criteria("a"),  # type: ignore[arg-type]
    )
    assert [e.id for e in client.evals.list().data] == [evaluation.id]
    assert client.evals.retrieve(evaluation.id).name == "wire"
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "source": {"type": "file_id", "id": items.id},
            "input_messages": {
                "type": "template",
                "template": [{"role": "user", "content": "{{ item.q }}"}],
            },
            "model": model_id,
        },
    )
    assert [r.id for r in client.evals.runs.list(evaluation.id).data] == [run.id]
    assert client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data == []
    record_output_item(server, run.id)
    [item] = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data
    assert (
        client.evals.runs.output_items.retrieve(
            item.id, eval_id=evaluation.id, run_id=run.id
        ).status
        == "pass"
    )
    assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "queued"
    assert client.evals.runs.delete(run.id, eval_id=evaluation.id).deleted
    assert client.evals.delete(evaluation.id).deleted

    assert client.models.delete(model_id).deleted

    violations = WIRE.take_violations()
    assert not violations, "\n".join(violations)
    counts = WIRE.counts()
    expected = {route.schema for route in ROUTES} | {
        route.stream_schema for route in ROUTES if route.stream_schema
    }
    expected |= {"ErrorResponse"}
    assert {name: counts[name] for name in sorted(expected) if counts[name] == 0} == {}


def test_raw_http_responses_are_checked_too(server: LiveServer, tenant: Tenant) -> None:
    """The check sits in the server, not in one client: plain httpx requests are counted."""
    WIRE.reset()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tenant.key}"}) as h:
        assert h.get("/v1/files").json()["data"] == []
        assert h.get("/v1/fine_tuning/jobs/ftjob-nope").status_code == 404
    counts = WIRE.counts()
    assert (counts["ListFilesResponse"], counts["ErrorResponse"]) == (1, 1)
