"""`tuna files`: upload (streamed, with a progress bar) and list datasets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from app.client_cli.api import APIError, TunaClient
from app.client_cli.common import Ctx, api_command, fail, human_bytes, transfer_progress, when

# "Invalid training file: 2 line(s) have errors. Line 3: invalid JSON (...). Line 7: ..."
_LINE_SPLIT = re.compile(r"\s+(?=Line \d+: )")


def format_validation_message(message: str) -> str:
    """Put each "Line N: ..." of the server's upload report on a line of its own."""
    parts = _LINE_SPLIT.split(message)
    if len(parts) == 1:
        return message
    return "\n".join([parts[0], *(f"  {part}" for part in parts[1:])])


def upload_with_progress(client: TunaClient, path: Path, purpose: str, quiet: bool) -> Any:
    """Upload `path`, drawing a progress bar on stderr (so stdout stays clean for scripts)."""
    size = path.stat().st_size
    progress = transfer_progress("Uploading", quiet)
    with progress:
        task = progress.add_task(path.name, total=size)
        return client.upload_file(path, purpose, on_progress=lambda n: progress.advance(task, n))


@click.group()
def files() -> None:
    """Upload and list files (training and validation data)."""


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--purpose", default="fine-tune", show_default=True)
@api_command
def files_upload(ctx: Ctx, path: Path, purpose: str) -> None:
    """Upload a JSONL dataset; a `fine-tune` file is validated by the server as it streams.

    Prints the new file id. A file the server refuses is reported with its line numbers and
    exit status 1.
    """
    try:
        uploaded = upload_with_progress(ctx.client, path, purpose, quiet=ctx.json)
    except APIError as exc:
        if exc.status_code == 400:
            fail(format_validation_message(exc.message))
        raise
    if ctx.json:
        ctx.emit_json(uploaded)
        return
    ctx.err.print(
        f"Uploaded [bold]{uploaded['filename']}[/] ({human_bytes(uploaded.get('bytes'))}, "
        f"{uploaded.get('status')}{_examples(uploaded)})",
        highlight=False,
    )
    ctx.out.print(uploaded["id"], highlight=False)


def _examples(file: dict[str, Any]) -> str:
    # Not part of OpenAI's FileObject; shown when a server adds it.
    count = file.get("example_count")
    return f", {count} examples" if count is not None else ""


@files.command("ls")
@click.option("--purpose", default=None, help="Only files with this purpose.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@api_command
def files_ls(ctx: Ctx, purpose: str | None, limit: int) -> None:
    """List files, newest first."""
    data = ctx.client.list_files(purpose=purpose, limit=limit)
    if ctx.json:
        for file in data:
            ctx.emit_json(file)
        return
    if not data:
        ctx.out.print("No files yet. Upload one with `tuna files upload data.jsonl`.")
        return
    with_counts = any("example_count" in f for f in data)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "FILENAME", "PURPOSE", "SIZE", "STATUS", "CREATED"):
        table.add_column(column, no_wrap=True)
    if with_counts:
        table.add_column("EXAMPLES", justify="right")
    for file in data:
        row = [
            file["id"],
            file.get("filename", ""),
            file.get("purpose", ""),
            human_bytes(file.get("bytes")),
            file.get("status", ""),
            when(file.get("created_at")),
        ]
        if with_counts:
            count = file.get("example_count")
            row.append("-" if count is None else str(count))
        table.add_row(*row)
    ctx.out.print(table)


@files.command("rm")
@click.argument("file_id")
@api_command
def files_rm(ctx: Ctx, file_id: str) -> None:
    """Delete a file."""
    result = ctx.client.request("DELETE", f"/v1/files/{file_id}")
    if ctx.json:
        ctx.emit_json(result)
    else:
        ctx.out.print(f"Deleted {result.get('id', file_id)}", highlight=False)
