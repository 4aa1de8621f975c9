"""The job page's Download control: the adapter at once, a GGUF file after a worker built it
(the page waits through the server's 202 answers), each saved under the server's file name."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from tests.app.dashboard.test_dashboard_webhooks import _sign_in
from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, wait_for

pytestmark = pytest.mark.slow


def test_download_the_model_of_a_job(
    server: LiveServer, api_key: str, worker: WorkerProcess, page: Any, tmp_path: Path
) -> None:
    client = server.client(api_key)
    training = client.files.create(
        file=("t.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error

    _sign_in(page, api_key)
    page.goto(f"{server.url}/#/jobs/{job.id}")
    page.wait_for_selector("#download-model")
    options = page.eval_on_selector_all("#download-format option", "els => els.map(e => e.value)")
    assert options == ["adapter", "merged", "gguf:f16", "gguf:q8_0", "gguf:q4_0"]

    with page.expect_download() as adapter:
        page.click("#download-model")
    saved = tmp_path / adapter.value.suggested_filename
    adapter.value.save_as(saved)
    assert saved.name.endswith(".adapter.tar") and ":" not in saved.name
    assert saved.stat().st_size > 0

    page.select_option("#download-format", "gguf:q8_0")
    with page.expect_download(timeout=180_000) as gguf:
        page.click("#download-model")
    saved = tmp_path / gguf.value.suggested_filename
    gguf.value.save_as(saved)
    assert saved.name.endswith(".q8_0.gguf")
    assert saved.read_bytes()[:4] == b"GGUF"
    page.wait_for_selector("#download-model:text('Download')")  # the button is back
