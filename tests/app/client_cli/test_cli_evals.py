"""`tuna evals`: one call creates an eval and a run per model; ls, show and items read them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.app.client_cli.conftest import Tuna

TINY = "tuna-tiny-test"


def items_file(tmp_path: Path) -> Path:
    path = tmp_path / "capitals.jsonl"
    rows = [
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "2+2?", "answer": "4"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_create_runs_each_model_and_show_compares_them(tuna: Tuna, tmp_path: Path) -> None:
    created = tuna(
        "evals",
        "create",
        "--name",
        "capitals",
        "--file",
        str(items_file(tmp_path)),
        "--prompt",
        "{{ item.question }}",
        "--system",
        "Answer in one word.",
        "--expect",
        "answer",
        "--model",
        TINY,
        "--model",
        TINY,
        "--max-tokens",
        "8",
        "--json",
    )
    assert created.exit_code == 0, created.stderr
    body = created.json()
    evaluation, runs = body["eval"], body["runs"]
    assert [c["name"] for c in evaluation["testing_criteria"]] == ["exact", "similar"]
    assert [run["model"] for run in runs] == [TINY, TINY]  # e.g. a base and its ft: model
    template = runs[0]["data_source"]["input_messages"]["template"]
    assert [m["role"] for m in template] == ["system", "user"]
    assert runs[0]["data_source"]["sampling_params"]["max_completions_tokens"] == 8

    listed = tuna("evals", "ls")
    assert listed.exit_code == 0 and evaluation["id"] in listed.stdout
    assert "exact, similar" in listed.stdout

    shown = tuna("evals", "show", evaluation["id"])
    assert shown.exit_code == 0, shown.stderr
    for run in runs:
        assert run["id"] in shown.stdout
    assert "PASS RATE" in shown.stdout and "similar" in shown.stdout

    items = tuna("evals", "items", evaluation["id"], runs[0]["id"], "--json")
    assert items.exit_code == 0  # empty until the run has been executed, never an error


def test_create_needs_one_way_of_grading(tuna: Tuna, tmp_path: Path) -> None:
    args = ["evals", "create", "--name", "x", "--file", str(items_file(tmp_path))]
    neither = tuna(*args, "--prompt", "{{ item.question }}")
    assert neither.exit_code == 2 and "--expect FIELD or --criteria FILE" in neither.stderr


def test_criteria_file_and_server_errors(tuna: Tuna, tmp_path: Path) -> None:
    criteria = tmp_path / "criteria.json"
    criteria.write_text(
        json.dumps({"type": "string_check", "name": "c", "input": "x", "reference": "y"})
    )  # no operation: the server names the param
    result = tuna(
        "evals",
        "create",
        "--name",
        "x",
        "--file",
        str(items_file(tmp_path)),
        "--prompt",
        "{{ item.question }}",
        "--criteria",
        str(criteria),
    )
    assert result.exit_code == 1
    assert "testing_criteria[0]" in result.stderr
