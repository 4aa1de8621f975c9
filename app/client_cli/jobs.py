"""`tuna jobs`: create, list, follow and cancel fine-tuning jobs.

`get` (or `show`) also prints the job's automatic comparison: a job with a validation file that
succeeds evaluates its starting model, kept checkpoints and final model on the validation set
(`app.evals.job_comparison`), and the job object carries that table as `eval`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from app.client_cli.common import (
    TERMINAL_STATUSES,
    Ctx,
    api_command,
    duration,
    styled_status,
    when,
)
from app.client_cli.files import upload_with_progress
from tuna_core.hyperparameters import METHODS, InvalidHyperparameter, check_value
from tuna_core.metrics import METHOD_METRICS, SPLITS, metric_names

#: `tuna jobs follow` exit statuses, by the job's final status.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
#: Ctrl-C while following: the job is left alone (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

LEVEL_STYLES = {"warn": "yellow", "error": "bold red"}

#: How the progress line shows a metric (named as in `tuna_core.metrics`, without its split):
#: a short label and a format. Loss is always first; the method's other metrics that have a label
#: here follow it (DPO: reward accuracy and margin; supervised: loss alone).
SHORT_LABELS: dict[str, tuple[str, str]] = {
    "reward_accuracy": ("acc", "{:.1%}"),
    "reward_margin": ("margin", "{:.4f}"),
}


def job_method(job: dict[str, Any]) -> str:
    """The job's training method (`method.type`); jobs from older servers are supervised."""
    return str((job.get("method") or {}).get("type") or "supervised")


def method_hyperparameters(job: dict[str, Any]) -> dict[str, Any]:
    """`method.<type>.hyperparameters` of a job, or {}."""
    method = job.get("method") or {}
    return dict((method.get(job_method(job)) or {}).get("hyperparameters") or {})


def format_metric(name: str, value: Any) -> str:
    """A metric's value for people: accuracies as percentages, the rest with 4 decimals."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    return f"{value:.1%}" if name.endswith("accuracy") else f"{value:.4f}"


class BetaType(click.ParamType):
    """DPO's beta: "auto" or a number in (0, 2], checked by the same rule as the API's."""

    name = "beta"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float) or value == "auto":
            return value
        try:
            number: Any = float(value)
        except ValueError:
            number = value
        try:
            return check_value("beta", number)
        except InvalidHyperparameter as exc:
            self.fail(exc.reason, param, ctx)


@click.group()
def jobs() -> None:
    """Create, list, follow and cancel fine-tuning jobs."""


def _file_id(ctx: Ctx, value: str | None) -> str | None:
    """A file id as given, or a local path uploaded first (so `--file train.jsonl` works)."""
    if value is None or value.startswith("file-"):
        return value
    path = Path(value)
    if not path.is_file():
        return value  # let the server say it does not know this id
    uploaded = upload_with_progress(ctx.client, path, "fine-tune", quiet=ctx.json)
    if not ctx.json:
        ctx.err.print(f"Uploaded {escape(path.name)} as {uploaded['id']}", highlight=False)
    return str(uploaded["id"])


@jobs.command("create")
@click.option(
    "--model",
    required=True,
    help="Base model (see /v1/models), or an ft: model or checkpoint to train further.",
)
@click.option("--file", "training_file", required=True, help="Training file id (or a local path).")
@click.option("--validation-file", default=None, help="Validation file id (or a local path).")
@click.option("--suffix", default=None, help="Up to 64 characters, put in the ft: model id.")
@click.option("--epochs", type=click.IntRange(1, 50), default=None, help="n_epochs (auto).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=None, help="(auto)")
@click.option("--lr-multiplier", type=float, default=None, help="learning_rate_multiplier (auto)")
@click.option("--seed", type=click.IntRange(0, 2147483647), default=None)
@click.option("--full", is_flag=True, help="Full fine-tuning instead of LoRA.")
@click.option(
    "--method",
    "method_type",
    type=click.Choice(METHODS),
    default="supervised",
    show_default=True,
    help="supervised (chat/completion examples) or dpo (preference pairs).",
)
@click.option(
    "--beta",
    type=BetaType(),
    default=None,
    metavar="NUMBER|auto",
    help="DPO's beta, in (0, 2] (auto); needs --method dpo.",
)
@click.option(
    "--no-eval",
    is_flag=True,
    help="Do not compare the models on the validation set when the job succeeds.",
)
@click.option(
    "--eval-items",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Compare the models on at most N validation examples (server default: its maximum).",
)
@click.option("--follow", "follow_after", is_flag=True, help="Then follow it (like `follow`).")
@api_command
def jobs_create(
    ctx: Ctx,
    model: str,
    training_file: str,
    validation_file: str | None,
    suffix: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr_multiplier: float | None,
    seed: int | None,
    full: bool,
    method_type: str,
    beta: float | str | None,
    no_eval: bool,
    eval_items: int | None,
    follow_after: bool,
) -> None:
    """Create a fine-tuning job (supervised or DPO) and print its id.

    With a validation file, a job that succeeds compares its starting model, checkpoints and
    final model on the validation set (see `tuna jobs show`); --no-eval opts out.
    """
    if beta is not None and method_type != "dpo":
        raise click.UsageError("--beta is a DPO hyperparameter: add --method dpo.")
    if no_eval and eval_items is not None:
        raise click.UsageError("--no-eval and --eval-items contradict each other: pick one.")
    if eval_items is not None and not validation_file:
        raise click.UsageError(
            "--eval-items sets the comparison on the validation set: add --validation-file."
        )
    body: dict[str, Any] = {"model": model, "training_file": _file_id(ctx, training_file)}
    if validation_file:
        body["validation_file"] = _file_id(ctx, validation_file)
    if suffix is not None:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    hyperparameters: dict[str, Any] = {}
    if epochs is not None:
        hyperparameters["n_epochs"] = epochs
    if batch_size is not None:
        hyperparameters["batch_size"] = batch_size
    if lr_multiplier is not None:
        hyperparameters["learning_rate_multiplier"] = lr_multiplier
    if beta is not None:
        hyperparameters["beta"] = beta
    if full:
        hyperparameters["training_type"] = "full"  # Tuna's extension; LoRA is the default
    if hyperparameters:
        body["method"] = {"type": method_type, method_type: {"hyperparameters": hyperparameters}}
    elif method_type != "supervised":
        body["method"] = {"type": method_type}  # supervised is what a job without one gets
    # Tuna's extension; left out, a job with a validation file compares its models anyway.
    if no_eval:
        body["auto_eval"] = False
    elif eval_items is not None:
        body["auto_eval"] = {"max_items": eval_items}
    job = ctx.client.post("/v1/fine_tuning/jobs", body)
    if ctx.json:
        ctx.emit_json(job)
    else:
        ctx.out.print(job["id"], highlight=False)
        if not follow_after:
            ctx.err.print(f"Follow it with: tuna jobs follow {job['id']}", highlight=False)
    if follow_after:
        sys.exit(follow_job(ctx, job["id"]))


@jobs.command("ls")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100))
@api_command
def jobs_ls(ctx: Ctx, limit: int) -> None:
    """List jobs, newest first."""
    data = ctx.client.list_jobs(limit=limit)
    if ctx.json:
        for job in data:
            ctx.emit_json(job)
        return
    if not data:
        ctx.out.print("No jobs yet. Start one with `tuna jobs create --model M --file F`.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "MODEL", "STATUS", "CREATED", "FINE-TUNED MODEL"):
        table.add_column(column, no_wrap=True)
    for job in data:
        table.add_row(
            job["id"],
            escape(job.get("model", "")),
            styled_status(job.get("status", "")),
            when(job.get("created_at")),
            escape(job.get("fine_tuned_model") or "-"),
        )
    ctx.out.print(table)


@jobs.command("get")
@click.argument("job_id")
@api_command
def jobs_get(ctx: Ctx, job_id: str) -> None:
    """Show one job: details, hyperparameters and (DPO) its latest metrics."""
    job = ctx.client.job(job_id)
    if ctx.json:
        ctx.emit_json(job)
        return
    hp = job.get("hyperparameters") or {}
    method = job_method(job)
    method_hp = method_hyperparameters(job)
    rows = [
        ("id", job["id"]),
        ("status", styled_status(job["status"])),
        ("model", escape(job.get("model", ""))),
        ("fine_tuned_model", escape(job.get("fine_tuned_model") or "-")),
        ("training_file", job.get("training_file") or "-"),
        ("validation_file", job.get("validation_file") or "-"),
        ("created", when(job.get("created_at"))),
        ("finished", when(job.get("finished_at"))),
        ("trained_tokens", str(job.get("trained_tokens") or "-")),
        ("method", escape(method)),
    ]
    if "beta" in method_hp:
        rows.append(("beta", str(method_hp["beta"])))
    rows += [
        ("n_epochs", str(hp.get("n_epochs", "-"))),
        ("batch_size", str(hp.get("batch_size", "-"))),
        ("lr_multiplier", str(hp.get("learning_rate_multiplier", "-"))),
        ("training_type", str(method_hp.get("training_type", "-"))),
        ("seed", str(job.get("seed", "-"))),
    ]
    if method != "supervised" and method in METHOD_METRICS:
        rows += _latest_metric_rows(ctx, job["id"], method)
    comparison = _comparison_setting(job)
    if comparison is not None:
        rows.append(("comparison", comparison))
    if job.get("error"):
        rows.append(("error", f"[red]{escape(job['error'].get('message') or '')}[/]"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    ctx.out.print(table)
    if job.get("eval"):
        _print_comparison(ctx, job["eval"])


# One page of events is plenty to find the newest metrics event (most events are metrics).
_METRICS_LOOKBACK = 100


def _latest_metric_rows(ctx: Ctx, job_id: str, method: str) -> list[tuple[str, str]]:
    """The method's metrics from the newest metrics event that has each split, newest step
    first: `train_*` and `valid_*` as training left them, `full_valid_*` from the final pass."""
    events = ctx.client.events_page(job_id, limit=_METRICS_LOOKBACK).get("data", [])
    measured = [e["data"] for e in events if e.get("type") == "metrics" and e.get("data")]
    if not measured:
        return []
    rows = [("step", f"{measured[0].get('step', '-')}/{measured[0].get('total_steps') or '?'}")]
    for split in SPLITS:
        names = metric_names(method, split)
        latest = next((data for data in measured if any(n in data for n in names)), None)
        if latest is not None:
            rows += [(n, format_metric(n, latest[n])) for n in names if n in latest]
    return rows


#: The comparison's statuses while its runs are still to finish.
COMPARING = ("queued", "in_progress")
#: An eval run's status, styled like the job statuses of `common.STATUS_STYLES`.
RUN_STYLES = {
    "queued": "cyan",
    "in_progress": "yellow",
    "completed": "green",
    "failed": "red",
    "canceled": "dim",
}


def _comparison_setting(job: dict[str, Any]) -> str | None:
    """The `comparison` line of `get`: off, on (and for how many examples), or its eval."""
    setting = job.get("auto_eval")
    evaluation = job.get("eval")
    if evaluation:
        status = str(evaluation.get("status") or "")
        return f"{evaluation['id']} ({_run_status(status)})"
    if not setting:
        return None  # a job from before the comparison existed
    if not setting.get("enabled"):
        return "off"
    if job.get("status") == "succeeded":
        return "none (see the job's events)"  # nothing to compare, or it could not start
    if job.get("status") in TERMINAL_STATUSES:
        return "off"  # failed or cancelled: only a succeeded job compares its models
    return f"on: after the job succeeds, on up to {setting.get('max_items', '?')} validation items"


def _run_status(status: str) -> str:
    return f"[{RUN_STYLES.get(status, 'white')}]{escape(status)}[/]"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _fixed(value: Any, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def _print_comparison(ctx: Ctx, evaluation: dict[str, Any]) -> None:
    """The job's models side by side on the validation set, the best fine-tuned one marked."""
    eval_id = evaluation["id"]
    status = str(evaluation.get("status") or "")
    ctx.out.print()
    ctx.out.print(
        f"[bold]Comparison on the validation set[/] ({evaluation.get('items', 0)} items)",
        highlight=False,
    )
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("MODEL", "MODEL ID", "STATUS", "EXACT MATCH", "SIMILARITY", "VALID LOSS", ""):
        table.add_column(column, no_wrap=True)
    for row in evaluation.get("rows") or []:
        table.add_row(
            escape(str(row.get("label") or "")),
            escape(str(row.get("model") or "")),
            _run_status(str(row.get("status") or "")),
            _percent(row.get("exact_match")),
            _fixed(row.get("similarity"), 2),
            _fixed(row.get("valid_loss"), 4),
            "[bold green]best[/]" if row.get("best") else "",
        )
    ctx.out.print(table)
    if status in COMPARING:
        ctx.out.print(
            f"Comparing models ({status.replace('_', ' ')}): each model's scores appear when "
            "its run completes; `best` marks the best so far.",
            highlight=False,
        )
    ctx.out.print(
        f"Eval {eval_id}: `tuna evals show {eval_id}` lists its runs, "
        f"`tuna evals items {eval_id} RUN_ID` a model's answers.",
        highlight=False,
    )


jobs.add_command(jobs_get, "show")  # `tuna jobs show JOB_ID`, the same command


@jobs.command("cancel")
@click.argument("job_id")
@api_command
def jobs_cancel(ctx: Ctx, job_id: str) -> None:
    """Cancel a job (a running one stops within a few seconds)."""
    job = ctx.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    if ctx.json:
        ctx.emit_json(job)
    else:
        ctx.out.print(f"{job['id']}: {styled_status(job['status'])}", highlight=False)


@jobs.command("follow")
@click.argument("job_id")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls.")
@api_command
def jobs_follow(ctx: Ctx, job_id: str, interval: float) -> None:
    """Follow a job live: progress, loss, tokens/s, ETA and its messages.

    Exit status: 0 succeeded, 1 failed, 2 cancelled. Ctrl-C stops following only; the job
    keeps running on the server. With --json, every event is printed as one JSON line (oldest
    first) and the final job object last.
    """
    sys.exit(follow_job(ctx, job_id, interval))


class _Metrics:
    """The newest metrics event seen, and what the progress bar shows from it."""

    def __init__(self) -> None:
        self.step = 0
        self.total: int | None = None
        self.data: dict[str, Any] = {}
        self.first_seen: tuple[float, int] | None = None  # (monotonic time, step) for ETA

    def update(self, data: dict[str, Any]) -> None:
        step = int(data.get("step") or 0)
        if step < self.step:
            return  # events arrive oldest first, but keep the latest step whatever happens
        self.step, self.data = step, data
        if data.get("total_steps"):
            self.total = int(data["total_steps"])
        if self.first_seen is None:
            self.first_seen = (time.monotonic(), step)

    def fields(self, job: dict[str, Any]) -> dict[str, str]:
        tps = self.data.get("tokens_per_second")
        return {
            "metrics": self._metrics_text(job_method(job)),
            "tps": "-" if tps is None else f"{tps:,.0f}",
            "eta": self._eta(job),
        }

    def _metrics_text(self, method: str) -> str:
        """`loss 0.6931 (val 0.7012)`, then the method's other labelled metrics (DPO:
        `acc 75.0% margin 0.1234`)."""
        method = method if method in METHOD_METRICS else "supervised"
        keys = zip(
            METHOD_METRICS[method],
            metric_names(method, "train"),
            metric_names(method, "valid"),
            strict=True,
        )
        parts = []
        for name, train_key, valid_key in keys:
            if name == "loss":
                label, pattern = "loss", "{:.4f}"
            elif name in SHORT_LABELS:
                label, pattern = SHORT_LABELS[name]
            else:
                continue
            train = self.data.get(train_key)
            valid = self.data.get(valid_key)
            text = "-" if train is None else pattern.format(train)
            if valid is not None:
                text += f" (val {pattern.format(valid)})"
            parts.append(f"{label} [bold]{text}[/]")
        return " ".join(parts)

    def _eta(self, job: dict[str, Any]) -> str:
        if job.get("status") in TERMINAL_STATUSES:
            return "0:00"
        if job.get("estimated_finish"):
            return duration(job["estimated_finish"] - time.time())
        if self.first_seen and self.total and self.step > self.first_seen[1]:
            started, first_step = self.first_seen
            per_step = (time.monotonic() - started) / (self.step - first_step)
            return duration(per_step * (self.total - self.step))
        return "-"


def follow_job(ctx: Ctx, job_id: str, interval: float = 1.0) -> int:
    """Poll the job and its events until it ends; returns the exit status (see EXIT_CODES)."""
    seen: set[str] = set()
    metrics = _Metrics()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.fields[total_text]}"),
        TextColumn("{task.fields[metrics]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=ctx.out,
        disable=ctx.json,
        refresh_per_second=4,
    )
    task: TaskID | None = None
    job: dict[str, Any] = {}
    try:
        with progress:
            task = progress.add_task(
                "", total=None, total_text="?", metrics="loss [bold]-[/]", tps="-", eta="-"
            )
            while True:
                job = ctx.client.job(job_id)  # before the events: a final status has its events
                for event in ctx.client.new_events(job_id, seen):
                    seen.add(event["id"])
                    if ctx.json:
                        ctx.emit_json(event)
                    if event.get("type") == "metrics" and event.get("data"):
                        metrics.update(event["data"])
                    elif not ctx.json:
                        _print_event(progress, event)
                fields = metrics.fields(job)
                progress.update(
                    task,
                    description=styled_status(job["status"]),
                    completed=metrics.step,
                    total=metrics.total,
                    total_text=str(metrics.total or "?"),
                    metrics=fields["metrics"],
                    tps=fields["tps"],
                    eta=fields["eta"],
                )
                if job["status"] in TERMINAL_STATUSES:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        if not ctx.json:
            ctx.err.print(
                f"\nStopped following. Job {job_id} keeps running on the server; "
                f"`tuna jobs follow {job_id}` picks it up again.",
                highlight=False,
            )
        return EXIT_INTERRUPTED
    return _finish(ctx, job)


def _print_event(progress: Progress, event: dict[str, Any]) -> None:
    style = LEVEL_STYLES.get(event.get("level", "info"))
    message = escape(event.get("message", ""))
    stamp = when(event.get("created_at"))[11:]  # time of day is enough while watching
    text = f"[{style}]{message}[/]" if style else message
    progress.console.print(f"[dim]{stamp}[/]  {text}", highlight=False)


def _finish(ctx: Ctx, job: dict[str, Any]) -> int:
    status = job["status"]
    if ctx.json:
        ctx.emit_json(job)
    elif status == "succeeded":
        ctx.out.print(
            f"[green]Succeeded.[/] Fine-tuned model: [bold]{escape(job['fine_tuned_model'])}[/]",
            highlight=False,
        )
        if job.get("eval"):
            ctx.err.print(
                f"Its models are being compared on the validation set: tuna jobs show {job['id']}",
                highlight=False,
            )
    elif status == "failed":
        error = job.get("error") or {}
        code = f" ({error['code']})" if error.get("code") else ""
        ctx.err.print(
            f"[bold red]Job failed{code}:[/] {escape(error.get('message') or 'unknown error')}",
            highlight=False,
        )
    else:
        ctx.err.print(f"Job {job['id']} was cancelled.", highlight=False)
    return EXIT_CODES.get(status, 1)
