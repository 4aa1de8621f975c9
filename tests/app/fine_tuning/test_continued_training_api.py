"""Continued training through the official SDK: a job whose `model` is one of the project's
`ft:` models (final or checkpoint), for supervised and DPO jobs, and the rules on its type."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from app.orm import FineTuningJob
from tests.app.fine_tuning.conftest import Tenant, add_fine_tuned_model, upload
from tests.app.fine_tuning.test_jobs_api import MODEL, bad_request
from tests.conftest import LiveServer
from tests.datasets import preference_jsonl

pytestmark = pytest.mark.usefixtures("job_queue")


def sft(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def row(server: LiveServer, job_id: str) -> FineTuningJob:
    with server.app.state.db.session_scope() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        session.expunge(job)
        return job


def messages(client: openai.OpenAI, job_id: str) -> list[tuple[str, str]]:
    return [(e.level, e.message) for e in client.fine_tuning.jobs.list_events(job_id)][::-1]


@pytest.mark.parametrize("checkpoint_step", [None, 10])
def test_a_supervised_job_continues_a_lora_model(
    server: LiveServer, tenant: Tenant, checkpoint_step: int | None
) -> None:
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name, checkpoint_step=checkpoint_step)
    job = client.fine_tuning.jobs.create(model=source, training_file=upload(client))
    assert job.model == source  # as the caller gave it
    assert job.status == "validating_files"
    stored = row(server, job.id)
    assert (stored.base_model, stored.trained_base_model) == (MODEL, MODEL)
    assert stored.init_from is not None and stored.init_from.startswith("jobs/ftjob-")
    assert stored.init_from.endswith("final" if checkpoint_step is None else "step-10")
    assert stored.hyperparameters["training_type"] == "lora"
    assert (
        "info",
        f"Continuing the LoRA adapter of {source} (rank 8, alpha 16 and dropout 0.0) on {MODEL}",
    ) in messages(client, job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).model == source


def test_a_dpo_job_continues_a_fine_tuned_model(server: LiveServer, tenant: Tenant) -> None:
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name)
    job = client.fine_tuning.jobs.create(
        model=source,
        training_file=upload(client, preference_jsonl()),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    assert (job.model, job.method.type) == (source, "dpo")  # type: ignore[union-attr]
    assert row(server, job.id).base_model == MODEL


def test_unknown_or_foreign_fine_tuned_models_are_not_found(
    server: LiveServer, tenant: Tenant
) -> None:
    client = tenant.client
    training = upload(client)
    theirs = add_fine_tuned_model(server, f"{tenant.name}-other")
    unknown = f"ft:{MODEL}:{tenant.name}::AAAAAAAA"
    before = client.fine_tuning.jobs.list().data
    bodies = []
    for model in (unknown, theirs, f"{unknown}:ckpt-step-3"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.fine_tuning.jobs.create(model=model, training_file=training)
        body = caught.value.body
        assert isinstance(body, dict)
        assert (body["param"], body["code"]) == ("model", "model_not_found")
        bodies.append(body["message"].replace(model, "X"))
    assert len(set(bodies)) == 1  # another project's model reads exactly like a missing one
    # An unknown base model name keeps its 400.
    body = bad_request(client.fine_tuning.jobs.create, model="gpt-4o-mini", training_file=training)
    assert (body["param"], body["code"]) == ("model", "model_not_found")
    assert client.fine_tuning.jobs.list().data == before


def test_a_model_whose_base_is_no_longer_offered(server: LiveServer, tenant: Tenant) -> None:
    source = add_fine_tuned_model(server, tenant.name, base="a-removed-model")
    body = bad_request(
        tenant.client.fine_tuning.jobs.create, model=source, training_file=upload(tenant.client)
    )
    assert (body["param"], body["code"]) == ("model", "model_not_found")
    assert "'a-removed-model', which this server no longer offers" in body["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"method": sft(training_type="lora")}, "method.supervised.hyperparameters.training_type"),
        ({"hyperparameters": {"training_type": "lora"}}, "hyperparameters.training_type"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"training_type": "lora"}}}},
            "method.dpo.hyperparameters.training_type",
        ),
    ],
)
def test_a_full_fine_tune_cannot_continue_as_lora(
    server: LiveServer, tenant: Tenant, kwargs: dict[str, Any], param: str
) -> None:
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name, training_type="full")
    dpo = kwargs.get("method", {}).get("type") == "dpo"
    training = upload(client, preference_jsonl() if dpo else None)
    before = client.fine_tuning.jobs.list().data  # the source model's job
    body = bad_request(
        client.fine_tuning.jobs.create, model=source, training_file=training, **kwargs
    )
    assert (body["param"], body["code"]) == (param, "invalid_training_type")
    assert f"'{source}' is a full fine-tune, which cannot be continued with LoRA" in body["message"]
    assert client.fine_tuning.jobs.list().data == before


def test_a_full_fine_tune_continues_full_by_default(server: LiveServer, tenant: Tenant) -> None:
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name, training_type="full")
    training = upload(client)
    for kwargs in ({}, {"method": sft(training_type="full")}):
        job = client.fine_tuning.jobs.create(model=source, training_file=training, **kwargs)
        shown = job.to_dict()["method"]["supervised"]["hyperparameters"]
        assert shown["training_type"] == "full"
        assert ("info", f"Continuing the full fine-tune {source} of {MODEL}") in messages(
            client, job.id
        )


def test_a_lora_model_trained_full_is_merged(server: LiveServer, tenant: Tenant) -> None:
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name)
    job = client.fine_tuning.jobs.create(
        model=source, training_file=upload(client), method=sft(training_type="full")
    )
    assert row(server, job.id).hyperparameters["training_type"] == "full"
    assert (
        "info",
        f"Training every weight of {MODEL} with the LoRA adapter of {source} merged in",
    ) in messages(client, job.id)


def test_a_continued_adapter_keeps_its_rank_and_alpha(server: LiveServer, tenant: Tenant) -> None:
    client = tenant.client
    source = add_fine_tuned_model(
        server, tenant.name, hyperparameters={"lora_rank": 4, "lora_alpha": 8}
    )
    training = upload(client)
    quiet = client.fine_tuning.jobs.create(model=source, training_file=training)
    asked = client.fine_tuning.jobs.create(
        model=source,
        training_file=training,
        method=sft(lora_rank=16, lora_alpha=8, lora_dropout=0.1),
    )
    for job in (quiet, asked):
        shown = job.to_dict()["method"]["supervised"]["hyperparameters"]
        assert (shown["lora_rank"], shown["lora_alpha"], shown["lora_dropout"]) == (4, 8, 0.0)
    assert not [m for level, m in messages(client, quiet.id) if level == "warn"]
    assert (
        "warn",
        "lora_rank 16 and lora_dropout 0.1 do not apply: a continued adapter keeps its own "
        "rank 4, alpha 8 and dropout 0.0",
    ) in messages(client, asked.id)
