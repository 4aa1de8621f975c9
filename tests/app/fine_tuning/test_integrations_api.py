"""A job's `integrations` at creation: each supported type accepted and shown back as given
(the wire check holds them to OpenAI's schema, plus Tuna's `mlflow`), every bad value a 400
naming its exact parameter, and nothing created."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.app.fine_tuning.conftest import RecordingQueue, upload
from tests.app.fine_tuning.test_jobs_api import bad_request, create
from tuna_core.integrations import SUPPORTED_INTEGRATIONS, check_integrations

pytestmark = pytest.mark.usefixtures("job_queue")

WANDB = {"type": "wandb", "wandb": {"project": "tuna"}}
MLFLOW = {"type": "mlflow", "mlflow": {"experiment_name": "tuna"}}


def test_supported_integrations_are_stored_as_given(
    client: openai.OpenAI, job_queue: RecordingQueue
) -> None:
    integrations = [
        {
            "type": "wandb",
            "wandb": {"project": "tuna", "name": "run-1", "entity": None, "tags": ["a", "b"]},
        },
        {
            "type": "mlflow",
            "mlflow": {"experiment_name": "tuna", "run_name": None, "tags": {"team": "search"}},
        },
    ]
    job = create(client, upload(client), integrations=integrations)
    assert job.to_dict()["integrations"] == integrations
    assert client.fine_tuning.jobs.retrieve(job.id).to_dict()["integrations"] == integrations
    # No "not supported" warning any more: the worker runs them.
    assert [e for e in client.fine_tuning.jobs.list_events(job.id) if e.level == "warn"] == []
    assert [job_id for job_id, _ in job_queue.enqueued] == [job.id]


@pytest.mark.parametrize(
    ("integrations", "param", "words"),
    [
        ("wandb", "integrations", "list"),  # the request schema's own check
        (["wandb"], "integrations[0]", "expected an object"),
        ([{"wandb": {"project": "p"}}], "integrations[0].type", "missing required"),
        ([{"type": "comet"}], "integrations[0].type", "supported: wandb, mlflow"),
        ([{"type": 7}], "integrations[0].type", "supported: wandb, mlflow"),
        ([{"type": "wandb"}], "integrations[0].wandb", "missing required"),
        ([{"type": "wandb", "wandb": []}], "integrations[0].wandb", "expected an object"),
        ([{"type": "wandb", "wandb": {}}], "integrations[0].wandb.project", "missing required"),
        (
            [{"type": "wandb", "wandb": {"project": None}}],
            "integrations[0].wandb.project",
            "missing required",
        ),
        (
            [{"type": "wandb", "wandb": {"project": 3}}],
            "integrations[0].wandb.project",
            "expected a string, got a number",
        ),
        (
            [{"type": "wandb", "wandb": {"project": " "}}],
            "integrations[0].wandb.project",
            "non-empty",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "entity": False}}],
            "integrations[0].wandb.entity",
            "expected a string, got a boolean",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "tags": "x"}}],
            "integrations[0].wandb.tags",
            "expected an array of strings",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "tags": ["ok", 1]}}],
            "integrations[0].wandb.tags[1]",
            "expected a string",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "tags": ["t" * 65]}}],
            "integrations[0].wandb.tags[0]",
            "at most 64 characters",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "projct": "q"}}],
            "integrations[0].wandb.projct",
            "unknown parameter",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p"}, "mlflow": {}}],
            "integrations[0].mlflow",
            "unknown parameter",
        ),
        ([{"type": "mlflow", "mlflow": {}}], "integrations[0].mlflow.experiment_name", "missing"),
        (
            [{"type": "mlflow", "mlflow": {"experiment_name": "e", "tags": ["x"]}}],
            "integrations[0].mlflow.tags",
            "expected an object of string values",
        ),
        (
            [{"type": "mlflow", "mlflow": {"experiment_name": "e", "tags": {"k": 1}}}],
            "integrations[0].mlflow.tags.k",
            "expected a string",
        ),
        (
            [{"type": "mlflow", "mlflow": {"experiment_name": "e", "tags": {"tuna.job_id": "x"}}}],
            "integrations[0].mlflow.tags.tuna.job_id",
            "set by the server",
        ),
        (
            # Where the run goes is the server's setting, never the caller's.
            [{"type": "mlflow", "mlflow": {"experiment_name": "e", "tracking_uri": "http://x"}}],
            "integrations[0].mlflow.tracking_uri",
            "unknown parameter",
        ),
        ([WANDB, MLFLOW, WANDB], "integrations[2].type", "given twice"),
        ([WANDB] * 6, "integrations", "at most 5"),
    ],
)
def test_bad_integrations_name_the_exact_param(
    client: openai.OpenAI, integrations: Any, param: str, words: str
) -> None:
    body = bad_request(create, client, upload(client), integrations=integrations)
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    assert words in body["message"], body["message"]
    assert body["message"].startswith(f"Invalid value for '{param}': ")
    assert client.fine_tuning.jobs.list().data == []


def test_one_definition_of_the_supported_types() -> None:
    assert SUPPORTED_INTEGRATIONS == ("wandb", "mlflow")
    assert check_integrations(None) is None
    assert check_integrations([]) == []
