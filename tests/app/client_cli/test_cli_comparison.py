"""`tuna jobs` and a job's automatic comparison on its validation set: the table `show` prints
from the job's `eval`, and the `auto_eval` that `create --no-eval / --eval-items` sends."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.client_cli.api import TunaClient
from tests.app.client_cli.conftest import CliResult, Tuna
from tests.app.client_cli.jobs_data import (
    TINY,
    add_job_comparison,
    comparison_run,
    finish_comparison_run,
)
from tests.conftest import LiveServer
from tests.datasets import chat_jsonl

HEADER = ["MODEL", "MODEL ID", "STATUS", "EXACT MATCH", "SIMILARITY", "VALID LOSS"]


def _as(server: LiveServer, tuna: Tuna) -> tuple[str, Any]:
    """A fresh project, and `tuna` signed in to it."""
    project = f"p-{uuid.uuid4().hex[:12]}"
    key = server.new_key(project)

    def run(*args: str) -> CliResult:
        return tuna(*args, env_overrides={"TUNA_API_KEY": key})

    return project, run


def _table(stdout: str) -> dict[str, list[str]]:
    """The comparison table's rows by label: cells are separated by two spaces or more."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() and line.split()[0] == "MODEL")
    assert re.split(r"\s{2,}", lines[start].strip()) == HEADER
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip() or not re.match(r"(base|step \d+|final) ", line):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def _details(stdout: str) -> dict[str, str]:
    """`get`'s key/value lines, up to the comparison table."""
    rows = {}
    for line in stdout.split("\n\n")[0].splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            rows[key] = value.strip()
    return rows


def test_show_prints_the_comparison_with_the_best_model(server: LiveServer, tuna: Tuna) -> None:
    project, run = _as(server, tuna)
    job_id, eval_id, runs = add_job_comparison(
        server,
        project,
        [
            comparison_run("base", 0, valid_loss="2.34", exact=(1, 3), similar=(2, 2, 0.6)),
            comparison_run("checkpoint", 5, valid_loss="1.2", exact=(3, 1), similar=(4, 0, 0.91)),
            comparison_run("final", 10, exact=(2, 2), similar=(3, 1, 0.7), errored=1),
        ],
    )
    job = run("jobs", "get", job_id, "--json").json()
    final, checkpoint = job["fine_tuned_model"], job["fine_tuned_model"] + ":ckpt-step-5"

    shown = run("jobs", "show", job_id)
    assert shown.exit_code == 0, shown.stderr
    assert _details(shown.stdout)["comparison"] == f"{eval_id} (completed)"
    assert "Comparison on the validation set (4 items)" in shown.stdout
    assert _table(shown.stdout) == {
        "base": [TINY, "completed", "25.0%", "0.60", "2.3400"],
        "step 5": [checkpoint, "completed", "75.0%", "0.91", "1.2000", "best"],
        "final": [final, "completed", "50.0%", "0.70", "-"],  # no validation loss: a dash
    }
    assert f"Eval {eval_id}: `tuna evals show {eval_id}` lists its runs" in shown.stdout
    assert f"`tuna evals items {eval_id} RUN_ID`" in shown.stdout
    assert "Comparing models" not in shown.stdout

    followed = run("jobs", "follow", job_id)  # a finished job: replayed, then where to look
    assert followed.exit_code == 0, followed.stderr
    assert f"compared on the validation set: tuna jobs show {job_id}" in followed.stderr

    # --json stays the API's object, the comparison as it is.
    table = run("jobs", "show", job_id, "--json").json()["eval"]
    assert table["id"] == eval_id and table["best_model"] == checkpoint
    assert [(r["label"], r["run_id"], r["best"]) for r in table["rows"]] == [
        ("base", runs["base"], False),
        ("step 5", runs["step 5"], True),
        ("final", runs["final"], False),
    ]
    assert table["rows"][2]["errored"] == 1 and table["rows"][2]["valid_loss"] is None


def test_show_says_while_models_are_being_compared(server: LiveServer, tuna: Tuna) -> None:
    project, run = _as(server, tuna)
    job_id, eval_id, runs = add_job_comparison(
        server,
        project,
        [
            comparison_run("base", 0, valid_loss="2.5", exact=(0, 4), similar=(1, 3, 0.3)),
            comparison_run("checkpoint", 3, valid_loss="1.75"),
            comparison_run("final", 6, valid_loss="1.5"),
        ],
    )
    shown = run("jobs", "show", job_id)
    assert shown.exit_code == 0, shown.stderr
    assert _details(shown.stdout)["comparison"] == f"{eval_id} (in_progress)"
    rows = _table(shown.stdout)
    assert rows["base"][1:] == ["completed", "0.0%", "0.30", "2.5000"]
    # Not graded yet: no scores, but the validation loss the training measured.
    assert rows["step 3"][1:] == ["queued", "-", "-", "1.7500"]
    assert rows["final"][1:] == ["queued", "-", "-", "1.5000"]
    assert "best" not in " ".join(cell for row in rows.values() for cell in row)
    assert "Comparing models (in progress)" in shown.stdout

    # The runs end: the final model answers best.
    finish_comparison_run(server, runs["step 3"], exact=(1, 3), similar=(2, 2, 0.5))
    finish_comparison_run(server, runs["final"], exact=(2, 2), similar=(2, 2, 0.65))
    done = run("jobs", "show", job_id)
    rows = _table(done.stdout)
    assert rows["step 3"][1:] == ["completed", "25.0%", "0.50", "1.7500"]
    assert rows["final"][1:] == ["completed", "50.0%", "0.65", "1.5000", "best"]
    assert "Comparing models" not in done.stdout
    assert _details(done.stdout)["comparison"] == f"{eval_id} (completed)"


# --- create: the auto_eval it sends ------------------------------------------------------------


def test_create_sends_auto_eval(tuna: Tuna, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def post(self: TunaClient, path: str, body: dict[str, Any] | None = None) -> Any:
        assert path == "/v1/fine_tuning/jobs" and body is not None
        sent.append(body)
        return {"id": "ftjob-sent"}

    monkeypatch.setattr(TunaClient, "post", post)
    files = ("--model", TINY, "--file", "file-train", "--validation-file", "file-valid")
    for args in [("--no-eval",), ("--eval-items", "7"), ()]:
        result = tuna("jobs", "create", *files, *args)
        assert result.exit_code == 0, result.stderr
    assert [body.get("auto_eval", "absent") for body in sent] == [
        False,
        {"max_items": 7},
        "absent",  # the server's default: on, since there is a validation file
    ]
    no_validation = tuna("jobs", "create", "--model", TINY, "--file", "file-train", "--no-eval")
    assert no_validation.exit_code == 0 and sent[-1]["auto_eval"] is False
    assert all(body["validation_file"] == "file-valid" for body in sent[:3])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--validation-file", "file-v", "--no-eval", "--eval-items", "5"), "contradict"),
        (("--eval-items", "5",), "add --validation-file"),
        (("--validation-file", "file-v", "--eval-items", "0"), "Invalid value for '--eval-items'"),
    ],
)  # fmt: skip
def test_create_refuses_eval_flags_that_cannot_work(
    tuna: Tuna, args: tuple[str, ...], message: str
) -> None:
    result = tuna("jobs", "create", "--model", TINY, "--file", "file-train", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert tuna("jobs", "ls", "--json").stdout == ""  # nothing was sent


def test_create_flags_against_the_server(server: LiveServer, tuna: Tuna, tmp_path: Path) -> None:
    _project, run = _as(server, tuna)
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(12))
    file_id = run("files", "upload", str(path)).stdout.strip()
    files = ("--model", TINY, "--file", file_id, "--validation-file", file_id)

    capped = run("jobs", "create", *files, "--eval-items", "7", "--json").json()
    assert capped["auto_eval"] == {"enabled": True, "max_items": 7} and capped["eval"] is None
    pending = _details(run("jobs", "show", capped["id"]).stdout)
    assert pending["comparison"] == "on: after the job succeeds, on up to 7 validation items"

    off = run("jobs", "create", *files, "--no-eval", "--json").json()
    assert off["auto_eval"]["enabled"] is False
    shown = run("jobs", "show", off["id"])
    assert _details(shown.stdout)["comparison"] == "off"
    assert "Comparison on the validation set" not in shown.stdout
    for job in (capped, off):
        assert run("jobs", "cancel", job["id"]).exit_code == 0
