"""QLoRA at the API: `quantization` is a Tuna hyperparameter extension ("none" or "4bit"),
checked at creation with the exact param and shown back on the job. Whether a worker has the
CUDA GPU it needs is the worker's to say (tests/worker/test_qlora_jobs.py)."""

from __future__ import annotations

from typing import Any

import pytest

from app.orm import FineTuningJob
from tests.app.fine_tuning.conftest import Tenant, add_fine_tuned_model, upload
from tests.app.fine_tuning.test_jobs_api import MODEL, bad_request, method
from tests.conftest import LiveServer
from tests.datasets import preference_jsonl

pytestmark = pytest.mark.usefixtures("job_queue")
HP = "method.supervised.hyperparameters"


def test_a_qlora_job_shows_its_quantization(server: LiveServer, tenant: Tenant) -> None:
    client = tenant.client
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload(client), method=method(quantization="4bit", lora_rank=16)
    )
    shown = job.to_dict()["method"]["supervised"]["hyperparameters"]
    assert (shown["quantization"], shown["training_type"], shown["lora_rank"]) == (
        "4bit",
        "lora",
        16,
    )
    assert client.fine_tuning.jobs.retrieve(job.id).to_dict()["method"] == job.to_dict()["method"]
    with server.app.state.db.session_scope() as session:
        stored = session.get(FineTuningJob, job.id)
        assert stored is not None and stored.hyperparameters["quantization"] == "4bit"

    dpo = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, preference_jsonl()),
        method={"type": "dpo", "dpo": {"hyperparameters": {"quantization": "4bit"}}},
    )
    assert dpo.to_dict()["method"]["dpo"]["hyperparameters"]["quantization"] == "4bit"
    plain = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client))
    assert plain.to_dict()["method"]["supervised"]["hyperparameters"]["quantization"] == "none"


@pytest.mark.parametrize(
    ("kwargs", "param", "reason"),
    [
        (
            {"method": method(quantization="8bit")},
            f"{HP}.quantization",
            "expected one of 'none', '4bit', got '8bit'",
        ),
        ({"method": method(quantization=4)}, f"{HP}.quantization", "got 4"),
        ({"method": method(quantization=None)}, f"{HP}.quantization", "got None"),
        ({"hyperparameters": {"quantization": "nf4"}}, "hyperparameters.quantization", "got 'nf4'"),
        (
            {"method": method(quantization="4bit", training_type="full")},
            f"{HP}.quantization",
            "needs training_type 'lora', not 'full'",
        ),
    ],
)
def test_bad_values_name_the_exact_param(
    tenant: Tenant, kwargs: dict[str, Any], param: str, reason: str
) -> None:
    client = tenant.client
    body = bad_request(
        client.fine_tuning.jobs.create, model=MODEL, training_file=upload(client), **kwargs
    )
    assert body["param"] == param
    assert reason in body["message"]
    assert client.fine_tuning.jobs.list().data == []


def test_a_full_fine_tune_cannot_continue_in_4bit(server: LiveServer, tenant: Tenant) -> None:
    """Its source settles training_type 'full', which QLoRA cannot train."""
    client = tenant.client
    source = add_fine_tuned_model(server, tenant.name, training_type="full")
    body = bad_request(
        client.fine_tuning.jobs.create,
        model=source,
        training_file=upload(client),
        method=method(quantization="4bit"),
    )
    assert body["param"] == f"{HP}.quantization"
    assert "needs training_type 'lora', not 'full'" in body["message"]
