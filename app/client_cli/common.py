"""What every client command shares: connection options, `--json`, output and error handling."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.client_cli.api import DEFAULT_BASE_URL, APIError, TunaClient

F = TypeVar("F", bound=Callable[..., Any])

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
STATUS_STYLES = {
    "validating_files": "cyan",
    "queued": "cyan",
    "running": "yellow",
    "paused": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "dim",
}


def console(stderr: bool = False) -> Console:
    """A console on the *current* stdout/stderr (CliRunner swaps them), wide when piped."""
    stream = sys.stderr if stderr else sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    # Piped output is for reading or grepping: never cut ids short to fit 80 columns.
    return Console(file=stream, width=None if is_tty else 200, soft_wrap=not is_tty)


@dataclass
class Ctx:
    client: TunaClient
    json: bool
    out: Console
    err: Console

    def emit_json(self, value: Any) -> None:
        """One JSON document per line on stdout (JSON lines when called repeatedly)."""
        click.echo(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def transfer_progress(verb: str, quiet: bool) -> Progress:
    """A bytes progress bar on stderr (stdout stays clean for scripts); off when ``quiet`` or
    when stderr is not a terminal."""
    err = console(stderr=True)
    return Progress(
        TextColumn(f"[bold]{verb}[/] {{task.description}}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )


def fail(message: str, code: int = 1) -> None:
    console(stderr=True).print(f"[bold red]Error:[/] {message}", highlight=False, markup=True)
    sys.exit(code)


def api_command(func: F) -> F:
    """Add `--base-url`, `--api-key`, `--json` to a command; hand it a `Ctx` as first argument.

    An `APIError` (the server's own message, or "cannot reach") ends the command with that
    message on stderr and exit status 1 - never a traceback.
    """

    @click.option(
        "--base-url",
        envvar="TUNA_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="Tuna server (env TUNA_BASE_URL); a trailing /v1 is fine.",
    )
    @click.option(
        "--api-key",
        envvar=["TUNA_API_KEY", "OPENAI_API_KEY"],
        default=None,
        help="API key (env TUNA_API_KEY or OPENAI_API_KEY).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @functools.wraps(func)
    def wrapper(base_url: str, api_key: str | None, as_json: bool, **kwargs: Any) -> Any:
        client = TunaClient(base_url, api_key)
        ctx = Ctx(client=client, json=as_json, out=console(), err=console(stderr=True))
        try:
            return func(ctx, **kwargs)
        except APIError as exc:
            if exc.status_code == 401 and not api_key:
                fail(f"{exc.message} (pass --api-key or set TUNA_API_KEY)")
            fail(exc.message)
        finally:
            client.close()

    return wrapper  # type: ignore[return-value]


def when(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def styled_status(status: str) -> str:
    return f"[{STATUS_STYLES.get(status, 'white')}]{status}[/]"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
