"""The fine-tuning jobs API through the official `openai` SDK, on SQLite and on Postgres.

No worker runs here: jobs stay where the API puts them, and moves the worker would make
(validating_files -> queued -> running) are made directly with `state.transition`.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from app.fine_tuning.repository import FineTuningRepository
from app.fine_tuning.state import JobStatus, transition
from app.orm import FineTuningJob
from tests.app.fine_tuning.conftest import RecordingQueue, Tenant, upload
from tests.conftest import LiveServer

pytestmark = pytest.mark.usefixtures("job_queue")

HP = "method.supervised.hyperparameters"
MODEL = "tuna-tiny-test"


def create(client: openai.OpenAI, training_file: str, **kwargs: Any):
    return client.fine_tuning.jobs.create(model=MODEL, training_file=training_file, **kwargs)


def method(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def move(server: LiveServer, job_id: str, *path: JobStatus, **values: Any) -> None:
    """Walk a job through statuses as the worker would; every step must be allowed."""
    with server.app.state.db.session_scope() as session:
        for status in path:
            assert transition(session, job_id, status, **values)


def bad_request(call, *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        call(*args, **kwargs)
    body = caught.value.body
    assert isinstance(body, dict)
    return body


# Create --------------------------------------------------------------------------------------


def test_create_with_method_form(tenant: Tenant, job_queue: RecordingQueue) -> None:
    client = tenant.client
    training = upload(client)
    validation = upload(client)
    job = create(
        client,
        training,
        validation_file=validation,
        suffix="my-model_1",
        seed=7,
        metadata={"team": "search"},
        method=method(n_epochs=3, lora_rank=4, training_type="lora", lora_dropout=0.1),
    )
    assert job.id.startswith("ftjob-")
    assert job.object == "fine_tuning.job"
    assert job.status == "validating_files"
    assert job.model == MODEL
    assert job.organization_id == tenant.name
    assert (job.training_file, job.validation_file) == (training, validation)
    assert job.seed == 7
    assert job.metadata == {"team": "search"}
    assert job.error is None and job.fine_tuned_model is None and job.finished_at is None
    assert job.trained_tokens is None and job.result_files == []
    assert job.created_at > 1_700_000_000
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size == "auto"
    assert job.hyperparameters.learning_rate_multiplier == "auto"
    raw = job.to_dict()
    assert raw["user_provided_suffix"] == "my-model_1"
    assert raw["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": 3,
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "training_type": "lora",
                "lora_rank": 4,
                "lora_alpha": 16,
                "lora_dropout": 0.1,
                "quantization": "none",
            }
        },
    }
    # Enqueued once, and only after commit: a separate session already saw the row.
    assert job_queue.enqueued == [(job.id, "validating_files")]

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages == [
        f"Validating validation file: {validation}",
        f"Validating training file: {training}",
        f"Created fine-tuning job: {job.id}",
    ]


def test_create_with_deprecated_form_and_alias(tenant: Tenant) -> None:
    client = tenant.client
    job = client.fine_tuning.jobs.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        training_file=upload(client),
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5},
    )
    assert job.model == "SmolLM2-135M-Instruct"  # stored under its canonical name
    assert job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 0.5
    assert job.method is not None and job.method.supervised is not None
    shown = job.method.supervised.hyperparameters
    assert shown is not None and (shown.n_epochs, shown.batch_size) == (2, 4)


def test_defaults(tenant: Tenant) -> None:
    job = create(tenant.client, upload(tenant.client))
    assert 0 <= job.seed <= 2_147_483_647
    assert job.metadata is None and job.validation_file is None
    assert job.to_dict()["user_provided_suffix"] is None
    assert job.to_dict()["method"]["supervised"]["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "training_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "quantization": "none",
    }


def test_auto_eval_is_on_with_a_validation_file(tenant: Tenant) -> None:
    client = tenant.client
    training = upload(client)
    without = create(client, training)
    assert without.to_dict()["auto_eval"] == {"enabled": False, "max_items": 100}
    assert without.to_dict()["eval"] is None
    # Opting out of what there is nothing to run on is allowed.
    assert create(client, training, extra_body={"auto_eval": False}).to_dict()["auto_eval"] == {
        "enabled": False,
        "max_items": 100,
    }
    validated = create(client, training, validation_file=upload(client))
    assert validated.to_dict()["auto_eval"] == {"enabled": True, "max_items": 100}
    capped = create(
        client,
        training,
        validation_file=upload(client),
        extra_body={"auto_eval": {"max_items": 7}},
    )
    assert capped.to_dict()["auto_eval"] == {"enabled": True, "max_items": 7}
    off = create(client, training, validation_file=upload(client), extra_body={"auto_eval": False})
    assert off.to_dict()["auto_eval"] == {"enabled": False, "max_items": 100}
    listed = {job.id: job.to_dict()["auto_eval"] for job in client.fine_tuning.jobs.list()}
    assert listed[capped.id] == {"enabled": True, "max_items": 7}


def test_both_forms_agree_or_conflict(tenant: Tenant) -> None:
    client = tenant.client
    training = upload(client)
    same = create(client, training, hyperparameters={"n_epochs": 4}, method=method(n_epochs=4))
    assert same.hyperparameters.n_epochs == 4
    merged = create(client, training, hyperparameters={"batch_size": 2}, method=method(n_epochs=5))
    assert (merged.hyperparameters.n_epochs, merged.hyperparameters.batch_size) == (5, 2)
    body = bad_request(
        create, client, training, hyperparameters={"n_epochs": 4}, method=method(n_epochs=5)
    )
    assert body["param"] == "hyperparameters.n_epochs"
    assert "Conflicting" in body["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"method": method(n_epochs=0)}, f"{HP}.n_epochs"),
        ({"method": method(n_epochs=51)}, f"{HP}.n_epochs"),
        ({"method": method(n_epochs=2.5)}, f"{HP}.n_epochs"),
        ({"method": method(n_epochs="3")}, f"{HP}.n_epochs"),
        ({"method": method(n_epochs=True)}, f"{HP}.n_epochs"),
        ({"method": method(batch_size=0)}, f"{HP}.batch_size"),
        ({"method": method(batch_size=257)}, f"{HP}.batch_size"),
        ({"method": method(learning_rate_multiplier=0)}, f"{HP}.learning_rate_multiplier"),
        ({"method": method(learning_rate_multiplier=-1.5)}, f"{HP}.learning_rate_multiplier"),
        ({"method": method(learning_rate_multiplier="fast")}, f"{HP}.learning_rate_multiplier"),
        ({"method": method(training_type="qlora")}, f"{HP}.training_type"),
        ({"method": method(lora_rank=0)}, f"{HP}.lora_rank"),
        ({"method": method(lora_rank=257)}, f"{HP}.lora_rank"),
        ({"method": method(lora_rank="auto")}, f"{HP}.lora_rank"),
        ({"method": method(lora_alpha=0)}, f"{HP}.lora_alpha"),
        ({"method": method(lora_dropout=1.0)}, f"{HP}.lora_dropout"),
        ({"method": method(lora_dropout=-0.1)}, f"{HP}.lora_dropout"),
        ({"method": method(warmup_steps=10)}, f"{HP}.warmup_steps"),
        ({"method": method(beta=0.1)}, f"{HP}.beta"),  # DPO's, not supervised's
        ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 1000}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"lora_rnk": 8}}, "hyperparameters.lora_rnk"),
        ({"suffix": ""}, "suffix"),
        ({"suffix": "a" * 65}, "suffix"),
        ({"suffix": "bad:suffix"}, "suffix"),
        ({"suffix": "with space"}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"seed": 2_147_483_648}, "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"method": {"type": "magic"}}, "method.type"),
        ({"method": {"supervised": {}}}, "method.type"),
        ({"method": {"type": "supervised", "extra": {}}}, "method.extra"),
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo"),
        (
            {"method": {"type": "supervised", "supervised": {"epochs": 1}}},
            "method.supervised.epochs",
        ),
        ({"integrations": ["wandb"]}, "integrations[0]"),
        ({"extra_body": {"unknown_argument": 1}}, "unknown_argument"),
        ({"extra_body": {"auto_eval": "yes"}}, "auto_eval"),
        ({"extra_body": {"auto_eval": {"enabled": 1}}}, "auto_eval.enabled"),
        ({"extra_body": {"auto_eval": {"max_items": 0}}}, "auto_eval.max_items"),
        ({"extra_body": {"auto_eval": {"max_items": 101}}}, "auto_eval.max_items"),
        ({"extra_body": {"auto_eval": {"items": 5}}}, "auto_eval.items"),
        # Asked for, but there is no validation set to compare the models on.
        ({"extra_body": {"auto_eval": True}}, "auto_eval"),
    ],
)
def test_invalid_create_requests(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    body = bad_request(create, client, upload(client), **kwargs)
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"
    assert client.fine_tuning.jobs.list().data == []


def test_bounds_are_inclusive(client: openai.OpenAI) -> None:
    training = upload(client)
    job = create(
        client,
        training,
        suffix="s" * 64,
        seed=2_147_483_647,
        metadata={"k" * 64: "v" * 512, **{f"k{i}": "v" for i in range(15)}},
        method=method(
            n_epochs=50,
            batch_size=256,
            learning_rate_multiplier=1e-3,
            lora_rank=256,
            lora_alpha=1,
            lora_dropout=0.99,
            training_type="full",
        ),
    )
    assert job.hyperparameters.n_epochs == 50 and job.hyperparameters.batch_size == 256
    job = create(client, training, seed=0, method=method(n_epochs=1, batch_size=1))
    assert (job.seed, job.hyperparameters.n_epochs) == (0, 1)


def test_unsupported_methods(client: openai.OpenAI) -> None:
    kind = "reinforcement"
    body = bad_request(create, client, upload(client), method={"type": kind, kind: {}})
    assert (body["param"], body["code"]) == ("method.type", "unsupported_method")
    assert "not supported yet" in body["message"]


def test_unknown_model(client: openai.OpenAI) -> None:
    body = bad_request(
        client.fine_tuning.jobs.create, model="gpt-4o-mini", training_file=upload(client)
    )
    assert (body["param"], body["code"]) == ("model", "model_not_found")


def test_missing_required_parameters(server: LiveServer, api_key: str) -> None:
    with server.http(api_key) as http:
        response = http.post("/v1/fine_tuning/jobs", json={"model": MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"


def test_training_and_validation_files_are_checked(
    server: LiveServer, client: openai.OpenAI
) -> None:
    good = upload(client)
    missing = bad_request(create, client, "file-doesnotexist")
    assert missing["param"] == "training_file"
    assert "does not exist" in missing["message"]

    # Another project's file looks exactly like one that never existed.
    stranger = server.client(server.new_key())
    foreign_id = upload(stranger)
    foreign = bad_request(create, client, foreign_id)
    assert foreign == {
        **missing,
        "message": missing["message"].replace("file-doesnotexist", foreign_id),
    }

    wrong_purpose = bad_request(create, client, upload(client, b"notes", purpose="user_data"))
    assert wrong_purpose["param"] == "training_file"
    assert "purpose" in wrong_purpose["message"]

    for bad in ("file-doesnotexist", foreign_id):
        body = bad_request(create, client, good, validation_file=bad)
        assert body["param"] == "validation_file"
    assert client.fine_tuning.jobs.list().data == []


def test_a_file_of_another_methods_format_is_refused_at_creation(client: openai.OpenAI) -> None:
    line = {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    preference = upload(client, ("\n".join([json.dumps(line)] * 12) + "\n").encode())
    body = bad_request(create, client, preference)
    assert (body["param"], body["code"]) == ("training_file", "invalid_file_format")
    assert "holds preference examples, but the supervised method trains on" in body["message"]
    body = bad_request(create, client, upload(client), validation_file=preference)
    assert (body["param"], body["code"]) == ("validation_file", "invalid_file_format")
    assert client.fine_tuning.jobs.list().data == []


def test_integrations_are_stored(client: openai.OpenAI) -> None:
    # Checked and run by the worker: tests/app/fine_tuning/test_integrations_api.py,
    # tests/worker/test_integrations.py.
    integrations = [{"type": "wandb", "wandb": {"project": "tuna"}}]
    job = create(client, upload(client), integrations=integrations)
    assert job.to_dict()["integrations"] == integrations
    assert [e for e in client.fine_tuning.jobs.list_events(job.id) if e.level == "warn"] == []


# Read ----------------------------------------------------------------------------------------


def test_retrieve(client: openai.OpenAI) -> None:
    job = create(client, upload(client), suffix="x")
    assert client.fine_tuning.jobs.retrieve(job.id) == job
    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert caught.value.body["param"] == "id"  # type: ignore[index]
    assert "No such fine-tuning job" in caught.value.body["message"]  # type: ignore[index]


def test_list_newest_first_with_paging(client: openai.OpenAI) -> None:
    training = upload(client)
    ids = [create(client, training).id for _ in range(5)]
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == ids[::-1][:2]
    assert first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # SDK follows after
    last = client.fine_tuning.jobs.list(limit=2, after=ids[1])
    assert [j.id for j in last.data] == [ids[0]] and not last.has_more


def test_list_filters_by_metadata(server: LiveServer, api_key: str, client: openai.OpenAI) -> None:
    training = upload(client)
    a = create(client, training, metadata={"team": "a", "env": "prod"}).id
    b = create(client, training, metadata={"team": "b", "env": "prod"}).id
    plain = create(client, training).id
    jobs = client.fine_tuning.jobs
    assert [j.id for j in jobs.list(metadata={"team": "a"})] == [a]
    assert [j.id for j in jobs.list(metadata={"env": "prod"})] == [b, a]
    assert [j.id for j in jobs.list(metadata={"env": "prod", "team": "b"})] == [b]
    assert [j.id for j in jobs.list(metadata={"team": "c"})] == []
    assert [j.id for j in jobs.list(metadata={})] == [plain, b, a]
    with server.http(api_key) as http:
        null = http.get("/v1/fine_tuning/jobs", params={"metadata": "null"})
        mixed = http.get("/v1/fine_tuning/jobs", params={"metadata": "null", "metadata[team]": "a"})
    assert [j["id"] for j in null.json()["data"]] == [plain]
    assert (mixed.status_code, mixed.json()["error"]["param"]) == (400, "metadata")


def test_list_limit_is_checked(server: LiveServer, api_key: str) -> None:
    with server.http(api_key) as http:
        for path in ("/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/ftjob-x/events"):
            response = http.get(path, params={"limit": 0})
            assert (response.status_code, response.json()["error"]["param"]) == (400, "limit")


def test_failed_job_shows_error_and_resolved_hyperparameters(
    server: LiveServer, client: openai.OpenAI
) -> None:
    job = create(client, upload(client), method=method(batch_size=2))
    with server.app.state.db.session_scope() as session:
        row = session.get(FineTuningJob, job.id)
        assert row is not None
        row.resolved_hyperparameters = {
            "n_epochs": 7,
            "batch_size": 2,
            "learning_rate_multiplier": 1.5,
            "learning_rate": 3e-4,
        }
    move(
        server,
        job.id,
        JobStatus.FAILED,
        error_code="invalid_n_examples",
        error_message="Training file has 7 example(s), but must have at least 10 examples",
        error_param="training_file",
    )
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.param) == ("invalid_n_examples", "training_file")
    assert (failed.hyperparameters.n_epochs, failed.hyperparameters.batch_size) == (7, 2)
    assert failed.hyperparameters.learning_rate_multiplier == 1.5


# Cancel, pause, resume -----------------------------------------------------------------------


def test_cancel(client: openai.OpenAI, job_queue: RecordingQueue) -> None:
    job = create(client, upload(client))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[0].message == "Fine-tuning job cancelled"

    again = bad_request(client.fine_tuning.jobs.cancel, job.id)
    assert again["code"] == "invalid_job_status"
    assert "cancelled" in again["message"]
    for call in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume):
        bad_request(call, job.id)
    assert len(list(client.fine_tuning.jobs.list_events(job.id))) == len(events)
    assert job_queue.enqueued == [(job.id, "validating_files")]


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_finished_jobs_cannot_be_cancelled(
    server: LiveServer, client: openai.OpenAI, final: JobStatus
) -> None:
    job = create(client, upload(client))
    move(server, job.id, JobStatus.QUEUED, JobStatus.RUNNING, final)
    body = bad_request(client.fine_tuning.jobs.cancel, job.id)
    assert final.value in body["message"]
    assert client.fine_tuning.jobs.retrieve(job.id).status == final.value


def test_pause_and_resume(
    server: LiveServer, client: openai.OpenAI, job_queue: RecordingQueue
) -> None:
    jobs = client.fine_tuning.jobs
    job = create(client, upload(client))
    body = bad_request(jobs.pause, job.id)  # still validating its files
    assert "validating_files" in body["message"]

    move(server, job.id, JobStatus.QUEUED, JobStatus.RUNNING)
    bad_request(jobs.resume, job.id)  # running: nothing to resume
    assert jobs.pause(job.id).status == "paused"
    assert jobs.retrieve(job.id).status == "paused"
    bad_request(jobs.pause, job.id)

    resumed = jobs.resume(job.id)
    assert resumed.status == "queued"
    # Re-enqueued once more, after the commit that made it queued.
    assert job_queue.enqueued == [(job.id, "validating_files"), (job.id, "queued")]

    assert jobs.pause(job.id).status == "paused"  # queued jobs can be paused too
    assert jobs.cancel(job.id).status == "cancelled"  # and paused ones cancelled
    messages = [e.message for e in jobs.list_events(job.id)][:4]
    assert messages == [
        "Fine-tuning job cancelled",
        "Fine-tuning job paused",
        "Fine-tuning job resumed",
        "Fine-tuning job paused",
    ]


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_cancel_active_jobs(server: LiveServer, client: openai.OpenAI, status: JobStatus) -> None:
    job = create(client, upload(client))
    path = [JobStatus.QUEUED] if status is JobStatus.QUEUED else [JobStatus.QUEUED, status]
    move(server, job.id, *path)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"


# Events and checkpoints ----------------------------------------------------------------------


def test_events_newest_first_with_paging(server: LiveServer, client: openai.OpenAI) -> None:
    job = create(client, upload(client))
    with server.app.state.db.session_scope() as session:
        repo = FineTuningRepository(session)
        for step in range(1, 24):
            repo.add_metrics_event(
                job.id, f"Step {step}/23: training loss=0.5", {"step": step, "train_loss": 0.5}
            )
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))
    assert len(events) == 25
    assert [e.data["step"] for e in events[:23]] == list(range(23, 0, -1))  # type: ignore[index]
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert all(e.object == "fine_tuning.job.event" and e.id.startswith("ftevent-") for e in events)
    assert {e.type for e in events} == {"metrics", "message"}

    page = client.fine_tuning.jobs.list_events(job.id)  # default limit 20
    assert len(page.data) == 20 and page.has_more
    tail = client.fine_tuning.jobs.list_events(job.id, after=page.data[-1].id, limit=100)
    assert [e.id for e in tail.data] == [e.id for e in events[20:]] and not tail.has_more

    with pytest.raises(openai.NotFoundError) as caught:
        client.fine_tuning.jobs.list_events(job.id, after="ftevent-nope")
    assert caught.value.body["param"] == "after"  # type: ignore[index]


def test_checkpoints(server: LiveServer, client: openai.OpenAI) -> None:
    job = create(client, upload(client), suffix="ck")
    empty = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert (empty.data, empty.has_more, empty.first_id, empty.last_id) == ([], False, None, None)

    model = f"ft:{MODEL}:org:ck:abcdefgh"
    with server.app.state.db.session_scope() as session:
        row = session.get(FineTuningJob, job.id)
        assert row is not None
        repo = FineTuningRepository(session)
        for step in (10, 20, 30):
            repo.add_checkpoint(
                job_id=job.id,
                project_id=row.project_id,
                step_number=step,
                fine_tuned_model_checkpoint=f"{model}:ckpt-step-{step}",
                metrics={"step": step, "train_loss": 1 / step, "extra": "ignored"},
                storage_key=f"x/{step}",
            )
    page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in page.data] == [30, 20] and page.has_more
    assert (page.first_id, page.last_id) == (page.data[0].id, page.data[1].id)
    everything = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    assert [c.step_number for c in everything] == [30, 20, 10]
    first = everything[0]
    assert first.id.startswith("ftckpt_") and first.object == "fine_tuning.job.checkpoint"
    assert first.fine_tuning_job_id == job.id
    assert first.fine_tuned_model_checkpoint == f"{model}:ckpt-step-30"
    assert first.metrics.step == 30 and first.metrics.train_loss == pytest.approx(1 / 30)


# Tenancy -------------------------------------------------------------------------------------


def test_other_project_gets_not_found_everywhere(server: LiveServer, client: openai.OpenAI) -> None:
    job = create(client, upload(client))
    stranger = server.client(server.new_key()).fine_tuning.jobs
    calls = (
        stranger.retrieve,
        stranger.cancel,
        stranger.pause,
        stranger.resume,
        stranger.list_events,
        stranger.checkpoints.list,
    )
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call(job.id)
        assert caught.value.body == {  # type: ignore[comparison-overlap]
            "message": f"No such fine-tuning job: {job.id}",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    assert stranger.list().data == []
    with pytest.raises(openai.NotFoundError):
        stranger.list(after=job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"


def test_app_hands_jobs_to_celery(server: LiveServer) -> None:
    from app.main import create_app
    from worker.celery_app import CeleryJobQueue

    app = create_app(server.settings)
    try:
        assert isinstance(app.state.job_queue, CeleryJobQueue)
    finally:
        app.state.db.dispose()
