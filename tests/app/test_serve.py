"""`tuna serve` as a user starts it: one process, SQLite, local files, its own worker.

The slow test fine-tunes the real bundled SmolLM2-135M-Instruct through the official SDK,
exactly the issue's "done when" flow.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO_ROOT, free_port

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Cuba", "Havana"),
    ("Nepal", "Kathmandu"),
    ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"),
    ("Belgium", "Brussels"),
    ("Romania", "Bucharest"),
    ("Turkey", "Ankara"),
]


def capitals_jsonl() -> bytes:
    lines = []
    for country, capital in CAPITALS:
        for question in (f"Capital of {country}?", f"What is the capital city of {country}?"):
            lines.append(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Answer with the city name only."},
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": capital},
                        ]
                    }
                )
            )
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def tuna_serve(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    port = free_port()
    key = "sk-tuna-serve-test-key"
    env = dict(
        os.environ,
        TUNA_API_KEY=key,
        HF_HUB_OFFLINE="1",
        TUNA_MODEL_CACHE_DIR=str(REPO_ROOT / "var" / "model-cache"),
        TUNA_TRAINING_QUEUE=f"serve-test-{port}",
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, (
            tmp_path / "serve.log"
        ).read_text()
        time.sleep(0.3)
    yield url, key, process
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    log.close()


def test_serve_prints_url_and_serves_files(tuna_serve, tmp_path: Path) -> None:
    url, key, _ = tuna_serve
    output = (tmp_path / "serve.log").read_text()
    assert f"Tuna is running at {url}" in output
    assert "TUNA_API_KEY" in output
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    created = client.files.create(file=("a.txt", io.BytesIO(b"hi")), purpose="user_data")
    assert client.files.content(created.id).read() == b"hi"


@pytest.mark.slow
def test_fine_tune_the_bundled_model_through_tuna_serve(tuna_serve) -> None:
    url, key, _ = tuna_serve
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    training_file = client.files.create(
        file=("capitals.jsonl", io.BytesIO(capitals_jsonl())), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=training_file.id,
        suffix="capitals",
        seed=11,
        hyperparameters={"n_epochs": 1, "batch_size": 8},
    )
    deadline = time.monotonic() + 900
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"still {job.status}"
        time.sleep(2)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:SmolLM2-135M-Instruct:default:capitals:{job.id[-8:]}"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=10))
    assert any(e.type == "metrics" for e in events)
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id))
    results = client.files.content(job.result_files[0]).text
    assert results.startswith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy")
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
