"""`TUNA_HUB_MODELS`: hub ids offered in /v1/models and accepted as a job's `model`, before any
download (the API never downloads; a worker does, see tests/worker/test_hub_model_jobs.py)."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from app.bootstrap import create_key, prepare
from app.config import Settings
from tests.conftest import make_settings, serve_in_thread
from tests.datasets import chat_jsonl

HUB_ID = "tuna-tests/tiny-hub-model"


def test_the_setting_is_a_list_of_hub_ids(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hub_models=[HUB_ID], local_models={"mine": tmp_path})
    assert settings.base_model_folders == {
        HUB_ID: settings.resolved_model_cache_dir / "hub" / "tuna-tests--tiny-hub-model",
        "mine": tmp_path,
    }
    with pytest.raises(ValidationError, match="not a Hugging Face model id"):
        Settings(data_dir=tmp_path, hub_models=["not-an-id"])


def test_a_hub_model_is_listed_and_accepted_before_it_is_downloaded(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    settings = make_settings(tmp_path, None).model_copy(
        update={
            "hub_models": [HUB_ID, "HuggingFaceTB/SmolLM2-135M-Instruct"],  # an alias stays one
            "model_cache_dir": cache,
        }
    )
    prepare(settings)
    from app.main import create_app

    app = create_app(settings)
    url, stop = serve_in_thread(app)
    try:
        client = openai.OpenAI(
            base_url=f"{url}/v1", api_key=create_key(settings, "p"), max_retries=0
        )
        listed = {m.id: m for m in client.models.list()}
        assert HUB_ID in listed and "HuggingFaceTB/SmolLM2-135M-Instruct" not in listed
        assert (listed[HUB_ID].owned_by, listed[HUB_ID].created) == ("tuna", 0)
        assert client.models.retrieve(HUB_ID).id == HUB_ID  # a slash in the path
        training = client.files.create(
            file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
        )
        job = client.fine_tuning.jobs.create(model=HUB_ID, training_file=training.id)
        assert (job.model, job.status) == (HUB_ID, "validating_files")
        client.fine_tuning.jobs.cancel(job.id)
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="tuna-tests/not-offered", training_file="file-x")
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert not (cache / "hub").exists()  # listing and creating downloaded nothing
    finally:
        stop()
        app.state.db.dispose()
