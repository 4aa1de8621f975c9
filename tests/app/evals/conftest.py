"""Fixtures for the Evals API tests: a recording queue, an eval to run, an `evals` file."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from sqlalchemy import select

from app.db import Database
from app.orm import EvalRun
from tests.conftest import LiveServer


@dataclass
class RecordingQueue:
    """Stands in for Celery: records each eval run sent, with its status as committed."""

    db: Database
    runs: list[tuple[str, str | None]] = field(default_factory=list)

    def enqueue(self, job_id: str) -> None:  # pragma: no cover - jobs are not created here
        raise AssertionError(f"unexpected job {job_id}")

    def enqueue_eval_run(self, run_id: str) -> None:
        with self.db.session_scope() as session:
            status = session.scalar(select(EvalRun.status).where(EvalRun.id == run_id))
        self.runs.append((run_id, status))


@pytest.fixture
def run_queue(server: LiveServer) -> Iterator[RecordingQueue]:
    real = server.app.state.job_queue
    queue = RecordingQueue(server.app.state.db)
    server.app.state.job_queue = queue
    try:
        yield queue
    finally:
        server.app.state.job_queue = real


ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CRITERION: dict[str, Any] = {
    "type": "string_check",
    "name": "exact",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "eq",
}
TEMPLATE: list[dict[str, Any]] = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "{{ item.question }}"},
]
MODEL = "tuna-tiny-test"


def create_eval(client: openai.OpenAI, **overrides: Any) -> Any:
    params: dict[str, Any] = {
        "name": "capitals",
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
        "testing_criteria": [CRITERION],
    }
    params.update(overrides)
    return client.evals.create(**params)


def items_jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def upload(client: openai.OpenAI, data: bytes, purpose: str = "evals") -> str:
    return client.files.create(file=("items.jsonl", io.BytesIO(data)), purpose=purpose).id  # type: ignore[arg-type]


def completions(source: dict[str, Any], model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "type": "completions",
        "source": source,
        "input_messages": {"type": "template", "template": TEMPLATE},
        "model": model,
        **extra,
    }


ROWS = [
    {"item": {"question": "Capital of France?", "answer": "Paris"}},
    {"question": "Capital of Italy?", "answer": "Rome"},  # a bare object is the item
    {"item": {"question": "Capital of Spain?", "answer": "Madrid"}},
]
CONTENT = [{"item": row.get("item", row)} for row in ROWS]  # `file_content` needs the `item` key
