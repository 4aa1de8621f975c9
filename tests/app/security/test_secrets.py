"""No API key in logs, error messages or the database: a real `tuna serve` process is driven with
good and bad keys through successes, client errors and auth failures, and its whole output and
its database file are searched for the keys afterwards."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
import openai

from app.bootstrap import create_key, prepare
from tests.conftest import ApiProcess, make_settings
from tests.datasets import chat_jsonl


def test_keys_appear_in_no_log_message_or_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", None)
    prepare(settings)
    env_key = f"sk-env-{uuid.uuid4().hex}"
    api = ApiProcess(settings, tmp_path / "api.log", TUNA_API_KEY=env_key)
    api.start()
    try:
        project_key = create_key(settings, "secrets-test")
        wrong_key = f"sk-wrong-{uuid.uuid4().hex}"
        client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=project_key, max_retries=0)
        file_id = client.files.create(
            file=("train.jsonl", io.BytesIO(chat_jsonl(12))), purpose="fine-tune"
        ).id
        client.fine_tuning.jobs.create(model="tuna-tiny-test", training_file=file_id)
        with httpx.Client(base_url=api.url, timeout=30) as http:
            for key in (project_key, env_key, wrong_key):
                headers = {"Authorization": f"Bearer {key}"}
                http.get("/v1/models", headers=headers)
                http.get("/v1/files/file-nope", headers=headers)  # 404
                http.post("/v1/fine_tuning/jobs", headers=headers, content=b"{not json")  # 400
                http.post("/v1/chat/completions", headers=headers, json={"model": "nope"})
            denied = http.get("/v1/models", headers={"Authorization": f"Bearer {wrong_key}"})
    finally:
        api.kill()

    assert denied.status_code == 401
    message = denied.json()["error"]["message"]
    assert wrong_key not in message and wrong_key[:6] in message  # a hint, as OpenAI gives
    log = (tmp_path / "api.log").read_text()
    assert "/v1/models" in log  # the access log was on: there was something to leak into
    database = Path(settings.resolved_database_url.removeprefix("sqlite:///")).read_bytes()
    for key in (project_key, env_key, wrong_key):
        assert key not in log
        assert key[-12:] not in log
        assert key.encode() not in database
