"""Tenant isolation, route by route: project B's key never reaches project A's objects.

The table below has one entry per (method, route) under /v1; `test_every_route_has_a_case`
derives the routes from the app itself, so a new endpoint without a case fails the suite.
Project A owns one of each object kind: a file, a fine-tuning job (created through the API; it
never trains), its events, a checkpoint, and two `ft:` models (the final model and a checkpoint
model, inserted as rows with a dummy storage folder). For B, every read or change of one of them
must be a 404 (never 200 or 403: a 403 would confirm that the id exists), no body may carry A's
data, and B's lists must not include A's objects. A's own key still sees everything afterwards.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select

from app.evals.repository import EvalRepository
from app.fine_tuning.state import JobStatus, transition
from app.orm import FineTunedModel, FineTuningCheckpoint, FineTuningEvent, Project
from tests.app.evals.test_evals_api import SAMPLE
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl

TINY = "tuna-tiny-test"


class _NoQueue:
    """Stands in for the broker: these jobs must never train (nor reach a later test's worker)."""

    def enqueue(self, job_id: str) -> None:
        pass

    def enqueue_eval_run(self, run_id: str) -> None:
        pass

    def enqueue_export(self, export_id: str) -> None:
        pass


@dataclass
class World:
    server: LiveServer
    a: httpx.Client
    b: httpx.Client
    a_name: str
    a_filename: str
    a_file: str
    a_job: str
    a_event: str
    a_checkpoint: str
    a_model: str
    a_ckpt_model: str
    b_file: str
    b_job: str

    @property
    def a_ids(self) -> list[str]:
        return [
            self.a_file,
            self.a_job,
            self.a_event,
            self.a_checkpoint,
            self.a_model,
            self.a_ckpt_model,
        ]

    @property
    def a_models(self) -> list[str]:
        return [self.a_model, self.a_ckpt_model]


def _upload(http: httpx.Client, filename: str) -> str:
    response = http.post(
        "/v1/files",
        files={"file": (filename, io.BytesIO(chat_jsonl(12)), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _create_job(http: httpx.Client, file_id: str) -> str:
    response = http.post(
        "/v1/fine_tuning/jobs", json={"model": TINY, "training_file": file_id, "suffix": "iso"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.fixture
def world(server: LiveServer) -> Iterator[World]:
    a_name = f"iso-a-{uuid.uuid4().hex[:10]}"
    a = server.http(server.new_key(a_name))
    b = server.http(server.new_key())
    real_queue = server.app.state.job_queue
    server.app.state.job_queue = _NoQueue()
    jobs: list[str] = []
    try:
        a_filename = f"secret-{uuid.uuid4().hex}.jsonl"
        a_file = _upload(a, a_filename)
        a_job = _create_job(a, a_file)
        jobs.append(a_job)
        b_file = _upload(b, "b.jsonl")
        b_job = _create_job(b, b_file)
        jobs.append(b_job)

        storage = server.app.state.storage
        final_key = f"jobs/{a_job}/final"
        ckpt_key = f"jobs/{a_job}/checkpoints/step-3"
        for key in (final_key, ckpt_key):
            storage.path(key).mkdir(parents=True, exist_ok=True)
            (storage.path(key) / "README").write_text("dummy: never loaded")
        a_model = f"ft:{TINY}:{a_name}:iso:{a_job[-8:]}"
        a_ckpt_model = f"{a_model}:ckpt-step-3"
        a_checkpoint = "ftckpt_" + uuid.uuid4().hex[:24]
        with server.app.state.db.session_scope() as session:
            project_id = session.scalar(select(Project.id).where(Project.name == a_name))
            assert project_id
            session.add(
                FineTuningCheckpoint(
                    id=a_checkpoint,
                    job_id=a_job,
                    project_id=project_id,
                    step_number=3,
                    fine_tuned_model_checkpoint=a_ckpt_model,
                    metrics={"step": 3, "train_loss": 1.0},
                    storage_key=ckpt_key,
                )
            )
            for model_id, key, step in ((a_model, final_key, None), (a_ckpt_model, ckpt_key, 3)):
                session.add(
                    FineTunedModel(
                        id=model_id,
                        project_id=project_id,
                        job_id=a_job,
                        base_model=TINY,
                        training_type="lora",
                        checkpoint_step=step,
                        storage_key=key,
                    )
                )
            a_event = session.scalar(
                select(FineTuningEvent.id).where(FineTuningEvent.job_id == a_job).limit(1)
            )
            assert a_event
        yield World(
            server, a, b, a_name, a_filename, a_file, a_job, a_event, a_checkpoint, a_model,
            a_ckpt_model, b_file, b_job,
        )  # fmt: skip
    finally:
        server.app.state.job_queue = real_queue
        with server.app.state.db.session_scope() as session:
            for job_id in jobs:
                transition(session, job_id, JobStatus.CANCELLED)
        a.close()
        b.close()


# -- checks ---------------------------------------------------------------------------------


def assert_hidden(world: World, response: httpx.Response, requested: str | None = None) -> None:
    """A 404 in OpenAI's envelope that tells nothing about A beyond the id B itself sent."""
    assert response.status_code == 404, (response.status_code, response.text)
    assert set(response.json()) == {"error"}
    text = response.text
    for secret in [*world.a_ids, world.a_name, world.a_filename]:
        if secret != requested and not (requested and secret in requested):
            assert secret not in text, (secret, text)


def assert_excludes(world: World, response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    for secret in [*world.a_ids, world.a_name, world.a_filename]:
        assert secret not in response.text, secret


def assert_a_intact(world: World) -> None:
    """B's attempts changed nothing: A still reads each object (and the job did not move)."""
    assert world.a.get(f"/v1/files/{world.a_file}").status_code == 200
    assert world.a.get(f"/v1/files/{world.a_file}/content").status_code == 200
    job = world.a.get(f"/v1/fine_tuning/jobs/{world.a_job}")
    assert job.status_code == 200 and job.json()["status"] == "validating_files"
    events = world.a.get(f"/v1/fine_tuning/jobs/{world.a_job}/events").json()["data"]
    assert world.a_event in [event["id"] for event in events]
    ckpts = world.a.get(f"/v1/fine_tuning/jobs/{world.a_job}/checkpoints").json()["data"]
    assert [ckpt["id"] for ckpt in ckpts] == [world.a_checkpoint]
    for model in world.a_models:
        assert world.a.get(f"/v1/models/{model}").status_code == 200
    listed = [m["id"] for m in world.a.get("/v1/models").json()["data"]]
    assert set(world.a_models) <= set(listed)


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _completion(model: str) -> dict[str, object]:
    return {"model": model, "prompt": "hi", "max_tokens": 2}


# -- the table ------------------------------------------------------------------------------


def case_files_create(w: World) -> None:
    """B's upload is B's alone: A can neither list nor read it."""
    assert w.a.get(f"/v1/files/{w.b_file}").status_code == 404
    assert w.b_file not in w.a.get("/v1/files").text
    new_file = _upload(w.b, "b2.jsonl")
    assert w.a.get(f"/v1/files/{new_file}").status_code == 404
    assert new_file not in w.a.get("/v1/files").text


def case_files_list(w: World) -> None:
    assert_excludes(w, w.b.get("/v1/files"))
    assert_excludes(w, w.b.get("/v1/files", params={"purpose": "fine-tune", "order": "asc"}))
    # A's id as a cursor is answered exactly as an id that never existed.
    bogus = w.b.get("/v1/files", params={"after": "file-doesnotexist000000000"})
    foreign = w.b.get("/v1/files", params={"after": w.a_file})
    assert foreign.status_code == bogus.status_code
    assert w.a_filename not in foreign.text


def case_files_retrieve(w: World) -> None:
    assert_hidden(w, w.b.get(f"/v1/files/{w.a_file}"), w.a_file)


def case_files_delete(w: World) -> None:
    assert_hidden(w, w.b.delete(f"/v1/files/{w.a_file}"), w.a_file)


def case_files_content(w: World) -> None:
    response = w.b.get(f"/v1/files/{w.a_file}/content")
    assert_hidden(w, response, w.a_file)
    assert b"What is" not in response.content


def case_jobs_create(w: World) -> None:
    """A's file id is as absent for B as a file that never existed."""
    foreign = w.b.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": w.a_file})
    bogus = w.b.post(
        "/v1/fine_tuning/jobs", json={"model": TINY, "training_file": "file-doesnotexist0000000"}
    )
    assert foreign.status_code == bogus.status_code == 400, foreign.text
    assert foreign.json()["error"]["code"] == bogus.json()["error"]["code"] == "file_not_found"
    foreign_val = w.b.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY, "training_file": w.b_file, "validation_file": w.a_file},
    )
    assert foreign_val.status_code == 400
    assert foreign_val.json()["error"]["code"] == "file_not_found"


def case_jobs_list(w: World) -> None:
    assert_excludes(w, w.b.get("/v1/fine_tuning/jobs"))
    assert_excludes(w, w.b.get("/v1/fine_tuning/jobs", params={"metadata": "null"}))
    bogus = w.b.get("/v1/fine_tuning/jobs", params={"after": "ftjob-doesnotexist0000000"})
    foreign = w.b.get("/v1/fine_tuning/jobs", params={"after": w.a_job})
    assert foreign.status_code == bogus.status_code
    assert_excludes(w, foreign) if foreign.status_code == 200 else assert_hidden(
        w, foreign, w.a_job
    )


def case_jobs_retrieve(w: World) -> None:
    assert_hidden(w, w.b.get(f"/v1/fine_tuning/jobs/{w.a_job}"), w.a_job)


def case_jobs_cancel(w: World) -> None:
    assert_hidden(w, w.b.post(f"/v1/fine_tuning/jobs/{w.a_job}/cancel"), w.a_job)


def case_jobs_pause(w: World) -> None:
    assert_hidden(w, w.b.post(f"/v1/fine_tuning/jobs/{w.a_job}/pause"), w.a_job)


def case_jobs_resume(w: World) -> None:
    assert_hidden(w, w.b.post(f"/v1/fine_tuning/jobs/{w.a_job}/resume"), w.a_job)


def case_events(w: World) -> None:
    assert_hidden(w, w.b.get(f"/v1/fine_tuning/jobs/{w.a_job}/events"), w.a_job)
    # A's event id as a cursor on B's own job: not found, like any unknown event.
    response = w.b.get(f"/v1/fine_tuning/jobs/{w.b_job}/events", params={"after": w.a_event})
    assert_hidden(w, response, w.a_event)


def case_checkpoints(w: World) -> None:
    assert_hidden(w, w.b.get(f"/v1/fine_tuning/jobs/{w.a_job}/checkpoints"), w.a_job)
    response = w.b.get(
        f"/v1/fine_tuning/jobs/{w.b_job}/checkpoints", params={"after": w.a_checkpoint}
    )
    assert_hidden(w, response, w.a_checkpoint)


def case_models_list(w: World) -> None:
    assert_excludes(w, w.b.get("/v1/models"))


def case_models_retrieve(w: World) -> None:
    for model in w.a_models:
        assert_hidden(w, w.b.get(f"/v1/models/{model}"), model)


def case_models_delete(w: World) -> None:
    for model in w.a_models:
        assert_hidden(w, w.b.delete(f"/v1/models/{model}"), model)
    for model in w.a_models:
        assert w.server.app.state.storage.path(
            f"jobs/{w.a_job}/final" if model == w.a_model else f"jobs/{w.a_job}/checkpoints/step-3"
        ).is_dir()


def case_models_import(w: World) -> None:
    """A's file id is as absent for B as a file that never existed."""
    foreign = w.b.post("/v1/models", json={"file_id": w.a_file, "base_model": TINY})
    bogus = w.b.post("/v1/models", json={"file_id": "file-doesnotexist000000", "base_model": TINY})
    assert foreign.status_code == bogus.status_code == 404, foreign.text
    assert_hidden(w, foreign, w.a_file)


def case_models_content(w: World) -> None:
    for model in w.a_models:
        for params in ({"format": "adapter"}, {"format": "merged"}, {"format": "gguf"}):
            response = w.b.get(f"/v1/models/{model}/content", params=params)
            assert_hidden(w, response, model)
    assert w.a.get(f"/v1/models/{w.a_model}/exports").json()["data"] == []


def case_models_exports_create(w: World) -> None:
    for model in w.a_models:
        response = w.b.post(f"/v1/models/{model}/exports", json={"format": "merged"})
        assert_hidden(w, response, model)
    assert w.a.get(f"/v1/models/{w.a_model}/exports").json()["data"] == []


def case_models_exports_list(w: World) -> None:
    for model in w.a_models:
        assert_hidden(w, w.b.get(f"/v1/models/{model}/exports"), model)


def case_chat(w: World) -> None:
    for model in w.a_models:
        for stream in (False, True):
            body = {**_chat(model), "stream": stream}
            assert_hidden(w, w.b.post("/v1/chat/completions", json=body), model)


def case_completions(w: World) -> None:
    for model in w.a_models:
        for stream in (False, True):
            body = {**_completion(model), "stream": stream}
            assert_hidden(w, w.b.post("/v1/completions", json=body), model)


# -- evals: A's eval, its run (never executed) and one output item, made per case -----------


@dataclass
class AEval:
    eval_id: str
    run_id: str
    item_id: str

    @property
    def ids(self) -> list[str]:
        return [self.eval_id, self.run_id, self.item_id]


def a_eval(w: World) -> AEval:
    items = w.a.post(
        "/v1/files",
        files={"file": ("items.jsonl", io.BytesIO(b'{"q": "hi"}\n'), "application/jsonl")},
        data={"purpose": "evals"},
    ).json()["id"]
    criteria = [
        {"type": "string_check", "name": "c", "input": "{{ sample.output_text }}",
         "reference": "hi", "operation": "eq"}
    ]  # fmt: skip
    evaluation = w.a.post(
        "/v1/evals",
        json={
            "name": "secret-eval",
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": criteria,
        },
    )
    assert evaluation.status_code == 200, evaluation.text
    eval_id = evaluation.json()["id"]
    run = w.a.post(f"/v1/evals/{eval_id}/runs", json=_eval_run_body(items, w.a_model))
    assert run.status_code == 200, run.text
    run_id = run.json()["id"]
    with w.server.app.state.db.session_scope() as session:
        evals = EvalRepository(session)
        row = evals.get_run(run_id)
        assert row is not None
        item = evals.add_output_item(
            row,
            datasource_item_id=0,
            datasource_item={"q": "hi"},
            sample=SAMPLE,
            results=[],
            status="pass",
        )
        item_id = str(item.id)
    return AEval(eval_id, run_id, item_id)


def _eval_run_body(file_id: str, model: str) -> dict[str, object]:
    return {
        "data_source": {
            "type": "completions",
            "source": {"type": "file_id", "id": file_id},
            "input_messages": {
                "type": "template",
                "template": [{"role": "user", "content": "{{ item.q }}"}],
            },
            "model": model,
        }
    }


def assert_eval_hidden(w: World, e: AEval, response: httpx.Response, requested: str) -> None:
    assert_hidden(w, response, requested)
    for secret in e.ids:
        if secret not in requested:
            assert secret not in response.text


def assert_eval_intact(w: World, e: AEval) -> None:
    run = w.a.get(f"/v1/evals/{e.eval_id}/runs/{e.run_id}")
    assert run.status_code == 200 and run.json()["status"] == "queued"
    item = w.a.get(f"/v1/evals/{e.eval_id}/runs/{e.run_id}/output_items/{e.item_id}")
    assert item.status_code == 200


def case_evals_create(w: World) -> None:
    """A's model as a grader's judge is answered exactly as a model that never existed."""

    def create(judge_model: str) -> httpx.Response:
        judge = {
            "type": "score_model", "name": "j", "model": judge_model,
            "input": [{"role": "user", "content": "{{ sample.output_text }}"}],
        }  # fmt: skip
        return w.b.post(
            "/v1/evals",
            json={
                "name": "b",
                "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
                "testing_criteria": [judge],
            },
        )

    foreign, bogus = create(w.a_model), create(f"ft:{TINY}:nobody:iso:abcdefgh")
    assert foreign.status_code == bogus.status_code == 400, foreign.text
    assert foreign.json()["error"]["param"] == bogus.json()["error"]["param"]
    assert foreign.json()["error"]["code"] == bogus.json()["error"]["code"]


def case_evals_list(w: World) -> None:
    e = a_eval(w)
    listed = w.b.get("/v1/evals")
    assert listed.status_code == 200 and e.eval_id not in listed.text
    assert "secret-eval" not in listed.text


def case_evals_retrieve(w: World) -> None:
    e = a_eval(w)
    assert_eval_hidden(w, e, w.b.get(f"/v1/evals/{e.eval_id}"), e.eval_id)


def case_evals_update(w: World) -> None:
    e = a_eval(w)
    response = w.b.post(f"/v1/evals/{e.eval_id}", json={"name": "taken"})
    assert_eval_hidden(w, e, response, e.eval_id)
    assert w.a.get(f"/v1/evals/{e.eval_id}").json()["name"] == "secret-eval"


def case_evals_delete(w: World) -> None:
    e = a_eval(w)
    assert_eval_hidden(w, e, w.b.delete(f"/v1/evals/{e.eval_id}"), e.eval_id)
    assert_eval_intact(w, e)


def case_eval_runs_create(w: World) -> None:
    e = a_eval(w)
    response = w.b.post(f"/v1/evals/{e.eval_id}/runs", json=_eval_run_body(w.b_file, TINY))
    assert_eval_hidden(w, e, response, e.eval_id)


def case_eval_runs_list(w: World) -> None:
    e = a_eval(w)
    assert_eval_hidden(w, e, w.b.get(f"/v1/evals/{e.eval_id}/runs"), e.eval_id)


def case_eval_runs_retrieve(w: World) -> None:
    e = a_eval(w)
    path = f"/v1/evals/{e.eval_id}/runs/{e.run_id}"
    assert_eval_hidden(w, e, w.b.get(path), path)


def case_eval_runs_cancel(w: World) -> None:
    e = a_eval(w)
    for path in (
        f"/v1/evals/{e.eval_id}/runs/{e.run_id}",
        f"/v1/evals/{e.eval_id}/runs/{e.run_id}/cancel",
    ):
        assert_eval_hidden(w, e, w.b.post(path), path)
    assert_eval_intact(w, e)


def case_eval_runs_delete(w: World) -> None:
    e = a_eval(w)
    path = f"/v1/evals/{e.eval_id}/runs/{e.run_id}"
    assert_eval_hidden(w, e, w.b.delete(path), path)
    assert_eval_intact(w, e)


def case_eval_output_items_list(w: World) -> None:
    e = a_eval(w)
    path = f"/v1/evals/{e.eval_id}/runs/{e.run_id}/output_items"
    assert_eval_hidden(w, e, w.b.get(path), path)


def case_eval_output_items_retrieve(w: World) -> None:
    e = a_eval(w)
    path = f"/v1/evals/{e.eval_id}/runs/{e.run_id}/output_items/{e.item_id}"
    assert_eval_hidden(w, e, w.b.get(path), path)


def _a_webhook(w: World) -> str:
    made = w.a.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert made.status_code == 200, made.text
    return str(made.json()["id"])


def case_webhooks_create(w: World) -> None:
    made = w.b.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/b"})
    assert made.status_code == 200, made.text
    mine = _a_webhook(w)
    assert mine not in w.b.get("/v1/webhooks").text


def case_webhooks_list(w: World) -> None:
    mine = _a_webhook(w)
    listed = w.b.get("/v1/webhooks")
    assert listed.status_code == 200 and mine not in listed.text


def case_webhooks_retrieve(w: World) -> None:
    mine = _a_webhook(w)
    assert w.b.get(f"/v1/webhooks/{mine}").status_code == 404
    assert w.a.get(f"/v1/webhooks/{mine}").status_code == 200


def case_webhooks_delete(w: World) -> None:
    mine = _a_webhook(w)
    assert w.b.delete(f"/v1/webhooks/{mine}").status_code == 404
    assert w.a.get(f"/v1/webhooks/{mine}").status_code == 200


def case_webhooks_deliveries(w: World) -> None:
    mine = _a_webhook(w)
    assert w.b.get(f"/v1/webhooks/{mine}/deliveries").status_code == 404
    assert w.a.get(f"/v1/webhooks/{mine}/deliveries").status_code == 200


def case_webhooks_update(w: World) -> None:
    mine = _a_webhook(w)
    changed = w.b.post(
        f"/v1/webhooks/{mine}", json={"url": "http://127.0.0.1:9/b", "enabled": False}
    )
    assert changed.status_code == 404
    kept = w.a.get(f"/v1/webhooks/{mine}").json()
    assert kept["url"] == "http://127.0.0.1:9/hook" and kept["enabled"] is True


def case_webhooks_rotate_secret(w: World) -> None:
    mine = _a_webhook(w)
    assert w.b.post(f"/v1/webhooks/{mine}/rotate_secret").status_code == 404
    assert w.a.post(f"/v1/webhooks/{mine}/rotate_secret").json()["secret"].startswith("whsec_")


CASES: dict[tuple[str, str], Callable[[World], None]] = {
    ("POST", "/v1/files"): case_files_create,
    ("GET", "/v1/files"): case_files_list,
    ("GET", "/v1/files/{file_id}"): case_files_retrieve,
    ("DELETE", "/v1/files/{file_id}"): case_files_delete,
    ("GET", "/v1/files/{file_id}/content"): case_files_content,
    ("POST", "/v1/fine_tuning/jobs"): case_jobs_create,
    ("GET", "/v1/fine_tuning/jobs"): case_jobs_list,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): case_jobs_retrieve,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): case_jobs_cancel,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): case_jobs_pause,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): case_jobs_resume,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): case_events,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): case_checkpoints,
    ("GET", "/v1/models"): case_models_list,
    ("GET", "/v1/models/{model}"): case_models_retrieve,
    ("DELETE", "/v1/models/{model}"): case_models_delete,
    ("POST", "/v1/models"): case_models_import,
    ("GET", "/v1/models/{model}/content"): case_models_content,
    ("POST", "/v1/models/{model}/exports"): case_models_exports_create,
    ("GET", "/v1/models/{model}/exports"): case_models_exports_list,
    ("POST", "/v1/chat/completions"): case_chat,
    ("POST", "/v1/completions"): case_completions,
    ("POST", "/v1/evals"): case_evals_create,
    ("GET", "/v1/evals"): case_evals_list,
    ("GET", "/v1/evals/{eval_id}"): case_evals_retrieve,
    ("POST", "/v1/evals/{eval_id}"): case_evals_update,
    ("DELETE", "/v1/evals/{eval_id}"): case_evals_delete,
    ("POST", "/v1/webhooks"): case_webhooks_create,
    ("GET", "/v1/webhooks"): case_webhooks_list,
    ("GET", "/v1/webhooks/{webhook_id}"): case_webhooks_retrieve,
    ("DELETE", "/v1/webhooks/{webhook_id}"): case_webhooks_delete,
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): case_webhooks_deliveries,
    ("POST", "/v1/webhooks/{webhook_id}"): case_webhooks_update,
    ("POST", "/v1/webhooks/{webhook_id}/rotate_secret"): case_webhooks_rotate_secret,
    ("POST", "/v1/evals/{eval_id}/runs"): case_eval_runs_create,
    ("GET", "/v1/evals/{eval_id}/runs"): case_eval_runs_list,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}"): case_eval_runs_retrieve,
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}"): case_eval_runs_cancel,
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel"): case_eval_runs_cancel,
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}"): case_eval_runs_delete,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items"): case_eval_output_items_list,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}"): (
        case_eval_output_items_retrieve
    ),
}


def _walk(routes: list[object]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI >= 0.16x keeps included routers as nodes instead of copying their routes.
        child = getattr(route, "original_router", None) or getattr(route, "router", None)
        if child is not None and child is not route and hasattr(child, "routes"):
            yield from _walk(list(child.routes))


def api_routes(server: LiveServer) -> set[tuple[str, str]]:
    """Every (method, path) under /v1: from the OpenAPI schema and from the routing tree (so a
    route left out of the schema is still found); `{model:path}` is written `{model}`."""
    routes = {
        (method.upper(), path)
        for path, item in server.app.openapi()["paths"].items()
        for method in item
        if path.startswith("/v1")
    }
    for route in _walk(list(server.app.routes)):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if path.startswith("/v1"):
            routes |= {(method, path) for method in route.methods if method != "HEAD"}
    return routes


def test_every_route_has_a_case(server: LiveServer) -> None:
    routes = api_routes(server)
    assert routes - set(CASES) == set(), "a /v1 route has no cross-project case"
    assert set(CASES) - routes == set(), "a case names a route that no longer exists"


@pytest.mark.parametrize("route", list(CASES), ids=[f"{m} {p}" for m, p in CASES])
def test_other_project_sees_nothing(world: World, route: tuple[str, str]) -> None:
    # A sees its own objects first: the 404s below are isolation, not missing fixtures.
    assert_a_intact(world)
    CASES[route](world)
    assert_a_intact(world)
