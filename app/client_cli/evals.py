"""`tuna evals`: create an eval and run it on several models, list evals, compare their runs.

`create` is the one-call path: a JSONL file of items, a prompt template, how to grade (`--expect
FIELD` for exact match plus a similarity score against that field, or `--criteria FILE` with
OpenAI testing criteria), and the models to compare; it creates the eval and one run per model.
`show` puts the runs side by side; `items` lists a run's graded items (e.g. the failures).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from app.client_cli.common import Ctx, api_command, styled_status, when
from app.client_cli.files import upload_with_progress
from tuna_core.evals import expected_answer_criteria


def _criteria(expect: str | None, criteria_file: Path | None) -> list[dict[str, Any]]:
    if (expect is None) == (criteria_file is None):
        raise click.UsageError("Say how to grade: --expect FIELD or --criteria FILE (one).")
    if expect is not None:
        return expected_answer_criteria(expect)
    assert criteria_file is not None
    try:
        loaded = json.loads(criteria_file.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"cannot read {criteria_file}: {exc}", param_hint="--criteria"
        ) from exc
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list):
        raise click.BadParameter("must hold a criterion or a list of them", param_hint="--criteria")
    return loaded


def _items_file(ctx: Ctx, value: str) -> str:
    """A file id as given, or a local JSONL path uploaded first with purpose `evals`."""
    if value.startswith("file-"):
        return value
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"no such file: {value}", param_hint="--file")
    uploaded = upload_with_progress(ctx.client, path, "evals", quiet=ctx.json)
    if not ctx.json:
        ctx.err.print(f"Uploaded {escape(path.name)} as {uploaded['id']}", highlight=False)
    return str(uploaded["id"])


def _pass_rate(run: dict[str, Any]) -> str:
    counts = run.get("result_counts") or {}
    total = counts.get("total") or 0
    return f"{counts.get('passed', 0) / total:.1%}" if total else "-"


@click.group()
def evals() -> None:
    """Evaluate models on your own items: create evals, run them, compare runs."""


@evals.command("create")
@click.option("--name", required=True, help="A name for the eval.")
@click.option("--file", "items", required=True, help="JSONL items (a local path or file id).")
@click.option(
    "--prompt", required=True, help='The user message, a template: "{{ item.question }}".'
)
@click.option("--system", default=None, help="A system message (a template too).")
@click.option("--expect", default=None, metavar="FIELD", help="Grade against item.FIELD.")
@click.option(
    "--criteria",
    "criteria_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A JSON file with OpenAI testing criteria (a list, or one).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="Run on this model (base, ft: or checkpoint); repeat to compare.",
)
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@api_command
def evals_create(
    ctx: Ctx,
    name: str,
    items: str,
    prompt: str,
    system: str | None,
    expect: str | None,
    criteria_file: Path | None,
    models: tuple[str, ...],
    max_tokens: int,
    temperature: float,
) -> None:
    """Create an eval and one run per --model; print the ids."""
    criteria = _criteria(expect, criteria_file)
    file_id = _items_file(ctx, items)
    evaluation = ctx.client.post(
        "/v1/evals",
        {
            "name": name,
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": criteria,
        },
    )
    template = [{"role": "system", "content": system}] if system else []
    template.append({"role": "user", "content": prompt})
    runs = [
        ctx.client.post(
            f"/v1/evals/{evaluation['id']}/runs",
            {
                "name": model,
                "data_source": {
                    "type": "completions",
                    "source": {"type": "file_id", "id": file_id},
                    "input_messages": {"type": "template", "template": template},
                    "model": model,
                    "sampling_params": {
                        "temperature": temperature,
                        "max_completions_tokens": max_tokens,
                    },
                },
            },
        )
        for model in models
    ]
    if ctx.json:
        ctx.emit_json({"eval": evaluation, "runs": runs})
        return
    ctx.out.print(evaluation["id"], highlight=False)
    for run in runs:
        ctx.err.print(f"Run {run['id']} on {escape(run['model'])}", highlight=False)
    ctx.err.print(f"Compare them with: tuna evals show {evaluation['id']}", highlight=False)


@evals.command("ls")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@api_command
def evals_ls(ctx: Ctx, limit: int) -> None:
    """List evals, newest first."""
    data = list(ctx.client.get("/v1/evals", limit=limit, order="desc").get("data", []))
    if ctx.json:
        for evaluation in data:
            ctx.emit_json(evaluation)
        return
    if not data:
        ctx.out.print("No evals yet. Create one with `tuna evals create`.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NAME", "CRITERIA", "CREATED"):
        table.add_column(column, no_wrap=True)
    for evaluation in data:
        names = ", ".join(c.get("name", "?") for c in evaluation.get("testing_criteria") or [])
        table.add_row(
            evaluation["id"],
            escape(evaluation.get("name") or ""),
            escape(names),
            when(evaluation.get("created_at")),
        )
    ctx.out.print(table)


@evals.command("show")
@click.argument("eval_id")
@api_command
def evals_show(ctx: Ctx, eval_id: str) -> None:
    """An eval's runs side by side: status, pass rate, and each criterion's passes."""
    evaluation = ctx.client.get(f"/v1/evals/{eval_id}")
    runs = list(ctx.client.get(f"/v1/evals/{eval_id}/runs", limit=100).get("data", []))
    if ctx.json:
        ctx.emit_json({"eval": evaluation, "runs": runs})
        return
    ctx.out.print(f"[bold]{escape(evaluation.get('name') or eval_id)}[/] ({eval_id})")
    if not runs:
        ctx.out.print("No runs yet.")
        return
    criteria = [c.get("name", "?") for c in evaluation.get("testing_criteria") or []]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("RUN", "MODEL", "STATUS", "ITEMS", "PASSED", "PASS RATE", *criteria):
        table.add_column(escape(column), no_wrap=True)
    for run in runs:
        counts = run.get("result_counts") or {}
        results = run.get("per_testing_criteria_results") or []  # in the eval's order
        cells = []
        for index in range(len(criteria)):
            result = results[index] if index < len(results) else None
            graded = (result["passed"] + result["failed"]) if result else 0
            cells.append(f"{result['passed']}/{graded}" if result and graded else "-")
        table.add_row(
            run["id"],
            escape(run.get("model") or ""),
            styled_status(run.get("status", "")),
            str(counts.get("total", 0)),
            str(counts.get("passed", 0)),
            _pass_rate(run),
            *cells,
        )
    ctx.out.print(table)


@evals.command("items")
@click.argument("eval_id")
@click.argument("run_id")
@click.option("--status", type=click.Choice(["pass", "fail"]), default=None)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@api_command
def evals_items(ctx: Ctx, eval_id: str, run_id: str, status: str | None, limit: int) -> None:
    """A run's graded items: the item, the model's answer, each grade."""
    page = ctx.client.get(
        f"/v1/evals/{eval_id}/runs/{run_id}/output_items", limit=limit, status=status
    )
    data = list(page.get("data", []))
    if ctx.json:
        for item in data:
            ctx.emit_json(item)
        return
    if not data:
        ctx.out.print("No items.")
        return
    for item in data:
        sample = item.get("sample") or {}
        outputs = sample.get("output") or []
        answer = outputs[0].get("content", "") if outputs else ""
        grades = ", ".join(
            f"{r.get('name')}: {'pass' if r.get('passed') else 'fail'}"
            for r in item.get("results") or []
        )
        ctx.out.print(
            f"[bold]#{item.get('datasource_item_id')}[/] {styled_status(item.get('status', ''))}"
            f"  {escape(grades)}"
        )
        ctx.out.print(f"  item:   {escape(json.dumps(item.get('datasource_item'))[:300])}")
        ctx.out.print(f"  answer: {escape(str(answer)[:300])}")
