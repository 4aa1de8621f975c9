"""DPO jobs through the official SDK: OpenAI's `method.dpo` wire format, `beta`, the job's
`method` object (checked against OpenAI's schema by the test server), preference files."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from app.orm import FineTuningJob
from tests.app.fine_tuning.conftest import upload
from tests.app.fine_tuning.test_jobs_api import MODEL, bad_request
from tests.conftest import LiveServer
from tests.datasets import preference_jsonl

pytestmark = pytest.mark.usefixtures("job_queue")

HP = "method.dpo.hyperparameters"
DEFAULTS = {
    "n_epochs": "auto",
    "batch_size": "auto",
    "learning_rate_multiplier": "auto",
    "beta": "auto",
    "training_type": "lora",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "quantization": "none",
}


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def create(client: openai.OpenAI, training_file: str | None = None, **kwargs: Any):
    training_file = training_file or upload(client, preference_jsonl())
    kwargs.setdefault("method", dpo())
    return client.fine_tuning.jobs.create(model=MODEL, training_file=training_file, **kwargs)


def test_create_a_dpo_job(client: openai.OpenAI) -> None:
    validation = upload(client, preference_jsonl(4))
    job = create(
        client,
        validation_file=validation,
        method=dpo(beta=0.5, n_epochs=2, lora_rank=4, training_type="lora"),
    )
    assert job.status == "validating_files" and job.model == MODEL
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    shown = job.method.dpo.hyperparameters
    assert shown is not None and (shown.beta, shown.n_epochs) == (0.5, 2)
    assert job.to_dict()["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": DEFAULTS | {"beta": 0.5, "n_epochs": 2, "lora_rank": 4}},
    }
    # OpenAI's deprecated top-level object keeps its three.
    assert job.to_dict()["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert client.fine_tuning.jobs.retrieve(job.id) == job
    assert job.id in {j.id for j in client.fine_tuning.jobs.list()}


def test_defaults_and_the_deprecated_form(client: openai.OpenAI) -> None:
    assert create(client).to_dict()["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": DEFAULTS},
    }
    # An empty `method.dpo`, as well as none at all.
    assert create(client, method={"type": "dpo", "dpo": {}}).to_dict()["method"]["dpo"] == {
        "hyperparameters": DEFAULTS
    }
    assert create(client, method={"type": "dpo"}).method.dpo.hyperparameters.beta == "auto"  # type: ignore[union-attr]
    merged = create(client, hyperparameters={"batch_size": 2, "beta": 1.0}, method=dpo(n_epochs=3))
    values = merged.to_dict()["method"]["dpo"]["hyperparameters"]
    assert (values["batch_size"], values["beta"], values["n_epochs"]) == (2, 1.0, 3)
    body = bad_request(create, client, hyperparameters={"beta": 1.0}, method=dpo(beta=0.5))
    assert body["param"] == "hyperparameters.beta" and "Conflicting" in body["message"]


def test_beta_bounds(client: openai.OpenAI) -> None:
    training = upload(client, preference_jsonl())
    assert create(client, training, method=dpo(beta=2)).method.dpo.hyperparameters.beta == 2  # type: ignore[union-attr]
    tiny = create(client, training, method=dpo(beta=1e-6))
    assert tiny.method.dpo.hyperparameters.beta == 1e-6  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("method", "param"),
    [
        (dpo(beta=0), f"{HP}.beta"),
        (dpo(beta=-0.5), f"{HP}.beta"),
        (dpo(beta=2.01), f"{HP}.beta"),
        (dpo(beta="high"), f"{HP}.beta"),
        (dpo(beta=True), f"{HP}.beta"),
        (dpo(beta=None), f"{HP}.beta"),
        (dpo(n_epochs=0), f"{HP}.n_epochs"),
        (dpo(lora_rank=0), f"{HP}.lora_rank"),
        (dpo(training_type="qlora"), f"{HP}.training_type"),
        (dpo(temperature=1), f"{HP}.temperature"),
        ({"type": "dpo", "dpo": {"hyperparameters": [1]}}, HP),
        ({"type": "dpo", "dpo": []}, "method.dpo"),
        ({"type": "dpo", "dpo": {"beta": 0.1}}, "method.dpo.beta"),
        ({"type": "dpo", "supervised": {}}, "method.supervised"),
        ({"type": "dpo", "dpo": {}, "supervised": {"hyperparameters": {}}}, "method.supervised"),
        ({"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.1}}}, "method.dpo"),
    ],
)
def test_invalid_dpo_requests(client: openai.OpenAI, method: dict[str, Any], param: str) -> None:
    body = bad_request(create, client, method=method)
    assert body["param"] == param
    assert body["type"] == "invalid_request_error"
    assert client.fine_tuning.jobs.list().data == []


def test_error_messages_say_what_goes_where(client: openai.OpenAI) -> None:
    body = bad_request(create, client, method=dpo(beta=3))
    assert body["message"] == (
        f"Invalid value for '{HP}.beta': expected a number greater than 0 and at most 2 or "
        '"auto", got 3.'
    )
    chat = upload(client)
    body = bad_request(
        client.fine_tuning.jobs.create,
        model=MODEL,
        training_file=chat,
        method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}},
    )
    assert "'beta' is a hyperparameter of the dpo method" in body["message"]
    body = bad_request(create, client, method={"type": "supervised", "dpo": {}})
    assert "the method type is 'supervised'" in body["message"]


def test_a_file_of_the_other_format_is_refused_both_ways(client: openai.OpenAI) -> None:
    chat = upload(client)
    preference = upload(client, preference_jsonl())
    body = bad_request(create, client, chat)
    assert (body["param"], body["code"]) == ("training_file", "invalid_file_format")
    assert body["message"] == (
        f"Invalid training_file: {chat}. The file holds chat examples, but the dpo method "
        "trains on preference examples."
    )
    body = bad_request(create, client, preference, validation_file=chat)
    assert (body["param"], body["code"]) == ("validation_file", "invalid_file_format")
    # And the reverse: preference data for a supervised job.
    body = bad_request(
        client.fine_tuning.jobs.create, model=MODEL, training_file=preference, method=None
    )
    assert (body["param"], body["code"]) == ("training_file", "invalid_file_format")
    assert "holds preference examples, but the supervised method trains on" in body["message"]
    assert client.fine_tuning.jobs.list().data == []


@pytest.mark.parametrize(("asked", "resolved_beta"), [("auto", 0.1), (0.5, 0.5)])
def test_resolved_numbers_replace_auto(
    server: LiveServer, client: openai.OpenAI, asked: Any, resolved_beta: float
) -> None:
    job = create(client, method=dpo(beta=asked, batch_size=2))
    with server.app.state.db.session_scope() as session:
        row = session.get(FineTuningJob, job.id)
        assert row is not None
        row.resolved_hyperparameters = {  # as the engine reports them, beta included
            "n_epochs": 7,
            "batch_size": 2,
            "learning_rate_multiplier": 1.5,
            "learning_rate": 3e-4,
            "beta": resolved_beta,
        }
    shown = client.fine_tuning.jobs.retrieve(job.id).to_dict()
    assert shown["method"]["dpo"]["hyperparameters"] == DEFAULTS | {
        "n_epochs": 7,
        "batch_size": 2,
        "learning_rate_multiplier": 1.5,
        "beta": resolved_beta,
    }
    assert shown["hyperparameters"] == {
        "n_epochs": 7,
        "batch_size": 2,
        "learning_rate_multiplier": 1.5,
    }
