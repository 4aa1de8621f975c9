"""The schema files in tests/openai_schemas/ and the check built on them (tests/openai_wire.py).

The files must load alone, keep OpenAI's nullability exactly (a `null` where OpenAI's schema has
none must fail), carry only the documented patches, and every `/v1` route Tuna serves must map
to one of them. The end-to-end run of the check is tests/app/inference/test_openai_wire.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.openai_schemas.extract import OBJECTS
from tests.openai_wire import (
    EXTENSIONS,
    SCHEMA_DIR,
    WireCheck,
    WireLog,
    route_for,
    schema_errors,
)

FILE = {
    "id": "file-abc",
    "object": "file",
    "bytes": 10,
    "created_at": 1,
    "filename": "a.jsonl",
    "purpose": "fine-tune",
    "status": "processed",
}
EVENT = {
    "id": "ftevent-a",
    "object": "fine_tuning.job.event",
    "created_at": 1,
    "level": "info",
    "message": "hi",
    "data": {},
    "type": "message",
}
CHECKPOINT = {
    "id": "ftckpt_a",
    "object": "fine_tuning.job.checkpoint",
    "created_at": 1,
    "fine_tuned_model_checkpoint": "ft:m:o::abc:ckpt-step-2",
    "fine_tuning_job_id": "ftjob-a",
    "metrics": {"step": 2, "train_loss": 1.5},
    "step_number": 2,
}
AUTO = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
JOB = {
    "id": "ftjob-a",
    "object": "fine_tuning.job",
    "created_at": 1,
    "error": None,
    "fine_tuned_model": None,
    "finished_at": None,
    "hyperparameters": AUTO,
    "method": {"type": "supervised", "supervised": {"hyperparameters": AUTO}},
    "model": "m",
    "organization_id": "org",
    "result_files": [],
    "status": "queued",
    "trained_tokens": None,
    "training_file": "file-abc",
    "validation_file": None,
    "seed": 1,
}
CHUNK = {
    "id": "chatcmpl-a",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
}
TEXT_CHUNK = {
    "id": "cmpl-a",
    "object": "text_completion",
    "created": 1,
    "model": "m",
    "choices": [{"text": "x", "index": 0, "logprobs": None, "finish_reason": None}],
}


def with_(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**document, **changes}


def _refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    if not isinstance(node, dict):
        return []
    found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return found + [ref for value in node.values() for ref in _refs(value)]


@pytest.mark.parametrize("name", OBJECTS)
def test_each_schema_stands_alone(name: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema.get("$defs", {})
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    text = json.dumps(schema)
    assert "nullable" not in text and "#/components/" not in text


VALID = [
    ("OpenAIFile", FILE),
    ("OpenAIFile", with_(FILE, expires_at=100, status_details="bad line 3")),
    ("OpenAIFile", with_(FILE, purpose="evals")),  # patch: an upload purpose OpenAI accepts
    ("ListFilesResponse", {"object": "list", "data": [], "first_id": None, "last_id": None,
                           "has_more": False}),  # patch: an empty page
    ("ListFilesResponse", {"object": "list", "data": [FILE], "first_id": "file-abc",
                           "last_id": "file-abc", "has_more": False}),
    ("FineTuningJobEvent", EVENT),
    ("FineTuningJobCheckpoint", CHECKPOINT),
    ("ListFineTuningJobCheckpointsResponse", {"object": "list", "data": [], "first_id": None,
                                              "last_id": None, "has_more": False}),
    ("FineTuningJob", JOB),
    ("FineTuningJob", with_(JOB, status="paused")),  # patch: Tuna's pause
    ("FineTuningJob", with_(JOB, user_provided_suffix="x", metadata=None, integrations=None)),
    ("FineTuningJob", with_(JOB, error={"code": "invalid_n_examples", "message": "m",
                                        "param": None})),
    ("CreateChatCompletionStreamResponse", CHUNK),
    ("CreateChatCompletionStreamResponse", with_(CHUNK, usage=None)),
    ("CreateCompletionStreamResponse", with_(TEXT_CHUNK, usage=None)),  # patch: stream shape
    ("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None, "code": None}}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "document"), VALID)
def test_valid_documents_pass(name: str, document: dict[str, Any]) -> None:
    assert schema_errors(name, document) == []


INVALID = [
    ("OpenAIFile", with_(FILE, expires_at=None), "/expires_at"),
    ("OpenAIFile", with_(FILE, status_details=None), "/status_details"),
    ("OpenAIFile", {k: v for k, v in FILE.items() if k != "status"}, "/"),
    ("ListFilesResponse", {"object": "list", "data": [FILE], "first_id": None,
                           "last_id": "file-abc", "has_more": False}, "/first_id"),
    ("FineTuningJobEvent", with_(EVENT, data=None), "/data"),
    ("FineTuningJobCheckpoint", with_(CHECKPOINT, metrics={"valid_loss": None}),
     "/metrics/valid_loss"),
    ("FineTuningJob", with_(JOB, status="exploded"), "/status"),
    ("FineTuningJob", with_(JOB, error={"code": None, "message": "m", "param": None}), "/error"),
    ("FineTuningJob", with_(JOB, hyperparameters=with_(AUTO, learning_rate_multiplier=0)),
     "/hyperparameters/learning_rate_multiplier"),  # 3.0's boolean exclusiveMinimum, kept
    ("FineTuningJob", with_(JOB, metadata={"k": 1}), "/metadata"),
    ("CreateChatCompletionStreamResponse", with_(CHUNK, system_fingerprint=None),
     "/system_fingerprint"),
    ("CreateCompletionResponse", with_(TEXT_CHUNK, choices=[], system_fingerprint=None),
     "/system_fingerprint"),
    ("CreateCompletionResponse", TEXT_CHUNK, "/choices/0/finish_reason"),  # whole: never null
    ("ErrorResponse", {"error": {"message": "m", "type": "t"}}, "/error"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "document", "where"), INVALID)
def test_invalid_documents_fail_at_the_bad_value(
    name: str, document: dict[str, Any], where: str
) -> None:
    errors = schema_errors(name, document)
    assert errors and all(e.startswith(f"{where}:") for e in errors), errors


def test_every_api_route_maps_to_a_schema(tmp_path: Path) -> None:
    from app.main import create_app

    paths = create_app(make_settings(tmp_path, None)).openapi()["paths"]
    unmapped = []
    for template, operations in paths.items():
        path = re.sub(r"\{[^}]+\}", "x-1", template)
        for method in operations:
            extension = any(re.fullmatch(pattern, template) for pattern in EXTENSIONS)
            if route_for(method.upper(), path) is None and not path.endswith("/content"):
                if extension:
                    continue  # Tuna's own routes (webhook endpoints): no OpenAI schema
                unmapped.append(f"{method.upper()} {template}")
    assert unmapped == []


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/files/{file_id}")
    def bad_file(file_id: str) -> JSONResponse:
        return JSONResponse({**FILE, "id": file_id, "status_details": None})

    @app.post("/v1/chat/completions")
    def stream() -> StreamingResponse:
        events = [CHUNK, with_(CHUNK, system_fingerprint=None), "[DONE]"]
        body = (f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
        return StreamingResponse(body, media_type="text/event-stream")

    @app.get("/v1/unmapped")
    def unmapped() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/v1/broken")
    def broken() -> JSONResponse:
        return JSONResponse({"detail": "not the envelope"}, status_code=418)

    return app


def test_the_check_names_request_schema_and_path() -> None:
    log = WireLog()
    with TestClient(WireCheck(_app(), log)) as http:
        assert http.get("/v1/files/file-1").status_code == 200  # the client still gets it
        http.post("/v1/chat/completions")
        http.get("/v1/unmapped")
        http.get("/v1/broken")
    assert log.take_violations() == [
        'GET /v1/files/file-1: OpenAIFile at /status_details: null is not of type "string"',
        "POST /v1/chat/completions (stream): CreateChatCompletionStreamResponse at "
        '/system_fingerprint: null is not of type "string"',
        "GET /v1/unmapped: no OpenAI schema is mapped for this route (tests/openai_wire.py ROUTES)",
        'GET /v1/broken: ErrorResponse at /: "error" is a required property',
    ]
    assert log.counts() == {
        "OpenAIFile": 1,
        "CreateChatCompletionStreamResponse": 2,
        "ErrorResponse": 1,
    }
