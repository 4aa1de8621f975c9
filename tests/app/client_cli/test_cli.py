"""The `tuna files|jobs|chat` client commands against a live server (and a real worker)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from app.client_cli.api import TunaClient, normalize_base_url
from tests.app.client_cli.conftest import Tuna
from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl

TINY = "tuna-tiny-test"


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(20))
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    lines = chat_jsonl(5).decode().splitlines()
    lines[1] = "{not json"
    lines[3] = json.dumps({"messages": [{"role": "robot", "content": "beep"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def upload(tuna: Tuna, path: Path) -> str:
    result = tuna("files", "upload", str(path))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_upload_prints_the_file_id(tuna: Tuna, good_file: Path) -> None:
    result = tuna("files", "upload", str(good_file))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().startswith("file-")
    assert "Uploaded train.jsonl" in result.stderr


def test_upload_json_is_the_file_object(tuna: Tuna, good_file: Path) -> None:
    result = tuna("files", "upload", str(good_file), "--json")
    assert result.exit_code == 0, result.stderr
    file = result.json()
    assert file["object"] == "file" and file["id"].startswith("file-")
    assert file["purpose"] == "fine-tune" and file["bytes"] == good_file.stat().st_size


def test_bad_upload_names_the_lines_and_exits_1(tuna: Tuna, bad_file: Path) -> None:
    result = tuna("files", "upload", str(bad_file))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: Invalid training file: 2 line(s) have errors.")
    assert any(line.strip().startswith("Line 2: invalid JSON") for line in lines)
    assert any(line.strip().startswith("Line 4:") and "robot" in line for line in lines)


def test_files_ls_human_and_json(tuna: Tuna, good_file: Path) -> None:
    empty = tuna("files", "ls")
    assert empty.exit_code == 0 and "No files yet" in empty.stdout
    first, second = upload(tuna, good_file), upload(tuna, good_file)

    table = tuna("files", "ls")
    assert table.exit_code == 0, table.stderr
    assert first in table.stdout and second in table.stdout
    assert "train.jsonl" in table.stdout and "processed" in table.stdout

    listed = tuna("files", "ls", "--json").json_lines()
    assert [f["id"] for f in listed] == [second, first]  # newest first, one object a line


def test_missing_key_is_a_readable_error(tuna: Tuna) -> None:
    result = tuna("jobs", "ls", env_overrides={"TUNA_API_KEY": None})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "TUNA_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_server_is_a_readable_error(tuna: Tuna) -> None:
    result = tuna("files", "ls", "--base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 1
    assert "Cannot reach the Tuna server at http://127.0.0.1:9" in result.stderr


def test_unknown_model_prints_the_api_message(tuna: Tuna, good_file: Path) -> None:
    result = tuna("jobs", "create", "--model", "no-such-model", "--file", upload(tuna, good_file))
    assert result.exit_code == 1
    assert "no-such-model" in result.stderr and "Traceback" not in result.stderr


def test_create_sends_hyperparameters_and_ls_lists_the_job(tuna: Tuna, good_file: Path) -> None:
    file_id = upload(tuna, good_file)
    created = tuna(
        "jobs",
        "create",
        "--model",
        TINY,
        "--file",
        file_id,
        "--validation-file",
        file_id,
        "--suffix",
        "cli",
        "--epochs",
        "3",
        "--batch-size",
        "2",
        "--lr-multiplier",
        "0.5",
        "--seed",
        "7",
        "--full",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    job = created.json()
    assert job["object"] == "fine_tuning.job" and job["id"].startswith("ftjob-")
    assert job["training_file"] == file_id and job["validation_file"] == file_id
    assert job["seed"] == 7 and job["user_provided_suffix"] == "cli"
    assert job["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 2,
        "learning_rate_multiplier": 0.5,
    }
    assert job["method"]["supervised"]["hyperparameters"]["training_type"] == "full"

    listed = tuna("jobs", "ls")
    assert listed.exit_code == 0 and job["id"] in listed.stdout and TINY in listed.stdout
    assert [j["id"] for j in tuna("jobs", "ls", "--json").json_lines()] == [job["id"]]

    shown = tuna("jobs", "get", job["id"])
    assert shown.exit_code == 0 and "training_type" in shown.stdout and "full" in shown.stdout


def test_create_prints_only_the_id_and_accepts_a_local_path(tuna: Tuna, good_file: Path) -> None:
    result = tuna("jobs", "create", "--model", TINY, "--file", str(good_file))
    assert result.exit_code == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith("ftjob-") and "\n" not in job_id
    assert "Uploaded train.jsonl as file-" in result.stderr
    assert f"tuna jobs follow {job_id}" in result.stderr


def test_cancel_then_follow_exits_2(tuna: Tuna, good_file: Path) -> None:
    created = tuna("jobs", "create", "--model", TINY, "--file", upload(tuna, good_file))
    assert created.exit_code == 0, created.stderr
    job_id = created.stdout.strip()
    cancelled = tuna("jobs", "cancel", job_id)
    assert cancelled.exit_code == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job_id}: cancelled"

    again = tuna("jobs", "cancel", job_id, "--json")  # a finished job cannot be cancelled
    assert again.exit_code == 1 and again.stderr.startswith("Error: ")

    followed = tuna("jobs", "follow", job_id)
    assert followed.exit_code == 2
    assert f"Job {job_id} was cancelled." in followed.stderr


def test_follow_unknown_job_is_an_error(tuna: Tuna) -> None:
    result = tuna("jobs", "follow", "ftjob-doesnotexist")
    assert result.exit_code == 1
    assert "ftjob-doesnotexist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(600)  # a job that is never picked up fails the test, not the run
def test_follow_to_success(tuna: Tuna, good_file: Path, worker: WorkerProcess) -> None:
    created = tuna(
        "jobs",
        "create",
        "--model",
        TINY,
        "--file",
        upload(tuna, good_file),
        "--suffix",
        "cli",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--seed",
        "1",
    )
    assert created.exit_code == 0, created.stderr
    job_id = created.stdout.strip()

    result = tuna("jobs", "follow", job_id, "--interval", "0.3")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = result.stdout
    # Message events in order, metrics folded into the progress line.
    assert out.index("Files validated") < out.index("Fine-tuning job started")
    assert out.index("Fine-tuning job started") < out.index("The job has successfully completed")
    assert "Step 1/5" not in out
    assert "step 5/5" in out and "loss " in out and "tok/s" in out
    model = tuna("jobs", "get", job_id, "--json").json()["fine_tuned_model"]
    assert model.startswith(f"ft:{TINY}:") and f"Fine-tuned model: {model}" in out

    # Following a finished job replays it; --json gives every event and then the job.
    lines = tuna("jobs", "follow", job_id, "--json").json_lines()
    events, final = lines[:-1], lines[-1]
    assert final["object"] == "fine_tuning.job" and final["status"] == "succeeded"
    assert all(e["object"] == "fine_tuning.job.event" for e in events)
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert steps == [1, 2, 3, 4, 5]  # oldest first, each once, across pages
    assert events[-1]["message"] == "The job has successfully completed"


@pytest.mark.timeout(600)
def test_follow_failed_job_exits_1_with_the_error(
    tuna: Tuna, tmp_path: Path, worker: WorkerProcess
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_bytes(chat_jsonl(7))
    created = tuna("jobs", "create", "--model", TINY, "--file", str(small))
    assert created.exit_code == 0, created.stderr
    job_id = created.stdout.strip()
    result = tuna("jobs", "follow", job_id, "--interval", "0.3")
    assert result.exit_code == 1
    assert "Job failed (invalid_n_examples):" in result.stderr
    assert "has 7 example(s), but must have at least 10" in result.stderr


def _has_chat_route(server: LiveServer) -> bool:
    return "/v1/chat/completions" in server.app.openapi()["paths"]


def test_chat_one_shot_against_the_base_model(server: LiveServer, tuna: Tuna) -> None:
    if not _has_chat_route(server):
        pytest.skip("this server has no /v1/chat/completions yet (app/inference)")
    streamed = tuna("chat", TINY, "--message", "What is 2 plus 2?", "--max-tokens", "8")
    assert streamed.exit_code == 0, streamed.stderr
    assert streamed.stdout.endswith("\n")

    completion = tuna(
        "chat",
        TINY,
        "-m",
        "What is 2 plus 2?",
        "--system",
        "Be brief.",
        "--max-tokens",
        "8",
        "--json",
    ).json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["role"] == "assistant"


def test_chat_json_needs_message(tuna: Tuna) -> None:
    result = tuna("chat", TINY, "--json", input="")
    assert result.exit_code == 1 and "--json needs --message" in result.stderr


def test_base_url_may_end_in_v1() -> None:
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    assert normalize_base_url("http://h:1") == "http://h:1"


def test_sse_parsing_keeps_chunks_and_stops_at_done() -> None:
    """The stream reader alone (until the inference endpoint lands, it is tested here)."""
    chunks = [
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"role": "assistant", "content": ""}}],
        },
        {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hel"}}]},
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}],
        },
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ": ping\n\ndata: [DONE]\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    client = TunaClient("http://tuna.test", "k")
    client._http = httpx.Client(base_url="http://tuna.test", transport=httpx.MockTransport(handler))
    got = list(client.stream_chat({"model": "m", "messages": []}))
    assert got == chunks
