"""`tuna jobs` for DPO jobs and continued training: the request it sends, what it shows."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from app.client_cli.api import TunaClient
from tests.app.client_cli.conftest import CliResult, Tuna
from tests.app.client_cli.jobs_data import (
    TINY,
    add_fine_tuned_model,
    add_metrics,
    dpo_steps,
)
from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl, preference_jsonl


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(preference_jsonl(20))
    return path


def upload(tuna: Tuna, path: Path) -> str:
    result = tuna("files", "upload", str(path))
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def cancelled_job(tuna: Tuna, *args: str) -> dict[str, Any]:
    """A job created by the CLI and cancelled at once, so no worker ever trains it."""
    created = tuna("jobs", "create", "--json", *args)
    assert created.exit_code == 0, created.stderr
    job = created.json()
    assert tuna("jobs", "cancel", job["id"]).exit_code == 0
    return job  # type: ignore[no-any-return]


# --- the request ------------------------------------------------------------------------------


def test_beta_without_dpo_is_a_usage_error(tuna: Tuna, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(12))
    for method in ([], ["--method", "supervised"]):
        result = tuna(
            "jobs", "create", "--model", TINY, "--file", str(path), "--beta", "0.2", *method
        )
        assert result.exit_code == 2, result.stdout + result.stderr
        assert "--beta is a DPO hyperparameter: add --method dpo." in result.stderr
        assert "Uploaded" not in result.stderr  # refused before anything was sent
    assert tuna("jobs", "ls", "--json").stdout == ""


@pytest.mark.parametrize("beta", ["0", "2.5", "-1", "high", "nan"])
def test_a_beta_out_of_range_is_refused_by_the_cli(tuna: Tuna, beta: str) -> None:
    result = tuna(
        "jobs", "create", "--model", TINY, "--file", "file-x", "--method", "dpo", "--beta", beta
    )
    assert result.exit_code == 2
    assert "Invalid value for '--beta'" in result.stderr
    assert "greater than 0 and at most 2" in result.stderr


def test_dpo_is_sent_in_openai_wire_format(tuna: Tuna, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body itself, whatever the server makes of it."""
    sent: list[dict[str, Any]] = []

    def post(self: TunaClient, path: str, body: dict[str, Any] | None = None) -> Any:
        assert path == "/v1/fine_tuning/jobs" and body is not None
        sent.append(body)
        return {"id": "ftjob-sent"}

    monkeypatch.setattr(TunaClient, "post", post)
    ft = "ft:tuna-tiny-test:proj:helper:Ab12Cd34"
    runs = [
        ("--method", "dpo", "--beta", "0.25", "--epochs", "2", "--full"),
        ("--method", "dpo", "--beta", "auto"),
        ("--method", "dpo"),
        ("--epochs", "2"),
        (),
    ]
    for args in runs:
        result = tuna("jobs", "create", "--model", ft, "--file", "file-train", *args)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == "ftjob-sent"
    assert [body.get("method") for body in sent] == [
        {
            "type": "dpo",
            "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.25, "training_type": "full"}},
        },
        {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}},
        {"type": "dpo"},
        {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        None,  # as before: a job without a method is supervised
    ]
    assert all(body["model"] == ft for body in sent)  # an ft: model passes through as given


# --- against the server -----------------------------------------------------------------------


def test_create_a_dpo_job(tuna: Tuna, pairs: Path) -> None:
    result = tuna(
        "jobs", "create", "--model", TINY, "--file", str(pairs), "--method", "dpo",
        "--beta", "0.3", "--epochs", "2", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    job = result.json()
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    tuna("jobs", "cancel", job["id"])


def test_get_and_follow_show_dpo_metrics(server: LiveServer, tuna: Tuna, pairs: Path) -> None:
    job = cancelled_job(
        tuna, "--model", TINY, "--file", upload(tuna, pairs), "--method", "dpo", "--beta", "0.3"
    )
    add_metrics(server, job["id"], dpo_steps())

    followed = tuna("jobs", "follow", job["id"])
    assert followed.exit_code == 2, followed.stdout + followed.stderr
    line = followed.stdout.splitlines()[-1]
    assert "step 3/3" in line
    assert "loss 0.6500 (val 0.7000)" in line
    assert "acc 75.0% (val 50.0%)" in line
    assert "margin 0.2500 (val 0.0500)" in line

    shown = tuna("jobs", "get", job["id"])
    assert shown.exit_code == 0, shown.stderr
    rows = {row.split()[0]: row.split()[1:] for row in shown.stdout.splitlines() if row.strip()}
    assert rows["method"] == ["dpo"] and rows["beta"] == ["0.3"]
    assert rows["step"] == ["3/3"]
    assert rows["train_loss"] == ["0.6500"]
    assert rows["train_reward_accuracy"] == ["75.0%"]
    assert rows["train_reward_margin"] == ["0.2500"]
    assert rows["train_chosen_reward"] == ["0.2000"]
    assert rows["valid_reward_accuracy"] == ["50.0%"]
    assert "full_valid_loss" not in rows
    assert tuna("jobs", "show", job["id"]).stdout == shown.stdout  # `show` is `get`


def test_supervised_output_is_unchanged(server: LiveServer, tuna: Tuna, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(12))
    job = cancelled_job(tuna, "--model", TINY, "--file", upload(tuna, path))
    steps = [
        {"step": 1, "total_steps": 2, "train_loss": 2.5, "train_mean_token_accuracy": 0.1},
        {"step": 2, "total_steps": 2, "train_loss": 1.23456, "valid_loss": 1.5},
    ]
    add_metrics(server, job["id"], steps)

    line = tuna("jobs", "follow", job["id"]).stdout.splitlines()[-1]
    assert "step 2/2" in line and "loss 1.2346 (val 1.5000)" in line
    assert "acc" not in line and "margin" not in line

    shown = tuna("jobs", "get", job["id"]).stdout
    rows = {row.split()[0]: row.split()[1:] for row in shown.splitlines() if row.strip()}
    assert rows["method"] == ["supervised"]
    assert "beta" not in rows and "train_loss" not in rows  # no metrics rows, as before


def test_continue_training_from_an_ft_model(server: LiveServer, tuna: Tuna, tmp_path: Path) -> None:
    project = f"p-{uuid.uuid4().hex[:12]}"
    key = server.new_key(project)
    final, ckpt = add_fine_tuned_model(server, project)
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(12))

    def run(*args: str) -> CliResult:
        return tuna(*args, env_overrides={"TUNA_API_KEY": key})

    listed = run("jobs", "ls", "--json").json_lines()
    for model in (final, ckpt):
        created = run("jobs", "create", "--model", model, "--file", str(path), "--json")
        assert created.exit_code == 0, created.stderr
        job = created.json()
        assert job["model"] == model  # as OpenAI echoes a continued job's model
        run("jobs", "cancel", job["id"])
        shown = run("jobs", "get", job["id"])
        assert model in shown.stdout
    assert len(run("jobs", "ls", "--json").json_lines()) == len(listed) + 2


@pytest.mark.timeout(600)
def test_follow_a_dpo_job_to_success(tuna: Tuna, pairs: Path, worker: WorkerProcess) -> None:
    created = tuna(
        "jobs", "create", "--model", TINY, "--file", upload(tuna, pairs), "--method", "dpo",
        "--beta", "0.2", "--epochs", "1", "--batch-size", "4", "--seed", "1",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    job_id = created.stdout.strip()
    result = tuna("jobs", "follow", job_id, "--interval", "0.3")
    assert result.exit_code == 0, result.stdout + result.stderr
    line = result.stdout.splitlines()[-2]  # the progress line, then "Succeeded. ..."
    assert "step 5/5" in line and "loss " in line and "acc " in line and "margin " in line
    shown = tuna("jobs", "get", job_id).stdout
    assert "train_reward_accuracy" in shown and "train_reward_margin" in shown


def test_jobs_create_help_names_the_methods() -> None:
    result = CliRunner().invoke(main, ["jobs", "create", "--help"])
    assert "--method [supervised|dpo]" in result.output and "--beta NUMBER|auto" in result.output
