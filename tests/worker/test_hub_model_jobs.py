"""A hub model (`TUNA_HUB_MODELS`) through a real worker, offline (`HF_HUB_OFFLINE=1`):

* not in the model cache: the job fails with `model_not_available`, saying the deployment is
  offline and how to download the model;
* once in the cache (here a copy of the tiny test model, as `tuna models pull` would leave it):
  the next job trains on it with no network, and the model lists with its real facts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from app.bootstrap import create_key, prepare
from tests.conftest import REPO_ROOT, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl
from tests.model_fixtures import TINY
from tests.worker.test_job_flow import TERMINAL, upload, wait_for
from tuna_core.base_models import hub_folder, resolve_base_model

HUB_ID = "tuna-tests/tiny-hub-model"


def test_an_offline_worker_needs_the_model_in_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "models"
    settings = make_settings(tmp_path, None).model_copy(
        update={"hub_models": [HUB_ID], "model_cache_dir": cache}
    )
    monkeypatch.setenv("TUNA_HUB_MODELS", json.dumps([HUB_ID]))  # the worker's environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prepare(settings)
    from app.main import create_app

    app = create_app(settings)
    url, stop = serve_in_thread(app)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=create_key(settings, "p"), max_retries=0
        )
        training = upload(client, chat_jsonl(12))

        def train_once() -> openai.types.fine_tuning.FineTuningJob:
            job = client.fine_tuning.jobs.create(
                model=HUB_ID,
                training_file=training,
                method={
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}},
                },
            )
            return wait_for(client, job.id, TERMINAL)

        failed = train_once()
        assert failed.status == "failed" and failed.error is not None
        assert (failed.error.code, failed.error.param) == ("model_not_available", "model")
        message = failed.error.message or ""
        assert f"'{HUB_ID}'" in message and "offline (HF_HUB_OFFLINE=1)" in message
        assert f"tuna models pull {HUB_ID}" in message

        target = hub_folder(settings.resolved_model_cache_dir, HUB_ID)
        shutil.copytree(resolve_base_model(TINY, REPO_ROOT / "var" / "model-cache"), target)
        done = train_once()
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model and done.fine_tuned_model.startswith(f"ft:{HUB_ID}:p:")
        listed = client.models.retrieve(HUB_ID)
        assert listed.created == int(target.stat().st_mtime)
        answer = client.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
        )
        assert answer.choices[0].message.content is not None
    finally:
        worker.stop()
        stop()
        app.state.db.dispose()
