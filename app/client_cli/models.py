"""`tuna models`: list models, download one (adapter, merged, GGUF), import one, delete one.

`download` asks the server for the artifact; while a worker builds it (the server answers 202)
it waits, showing the export's status, then streams the file with a progress bar. `import`
packs a local folder into a tar archive, uploads it and registers it as an `ft:` model.
"""

from __future__ import annotations

import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from app.client_cli.common import Ctx, api_command, console, fail, transfer_progress, when
from app.client_cli.files import upload_with_progress
from tuna_core.exports import EXPORT_FORMATS, GGUF_TYPES


@click.group()
def models() -> None:
    """Models you can call; download yours, import one trained elsewhere."""


@models.command("ls")
@api_command
def models_ls(ctx: Ctx) -> None:
    """List base models and your fine-tuned ones."""
    data = list(ctx.client.get("/v1/models").get("data", []))
    if ctx.json:
        for model in data:
            ctx.emit_json(model)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "OWNED BY", "CREATED"):
        table.add_column(column, no_wrap=True)
    for model in data:
        table.add_row(escape(model["id"]), escape(model["owned_by"]), when(model.get("created")))
    ctx.out.print(table)


@models.command("download")
@click.argument("model")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(EXPORT_FORMATS),
    default="merged",
    show_default=True,
    help="adapter: the LoRA adapter folder; merged: a full transformers folder; gguf: llama.cpp.",
)
@click.option(
    "--quantization",
    type=click.Choice(GGUF_TYPES),
    default=None,
    help="For --format gguf (server default: f16).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="File (or folder) to write; default: the server's file name, here.",
)
@click.option(
    "--wait",
    "wait_seconds",
    default=3600,
    show_default=True,
    type=click.IntRange(0),
    help="Seconds to wait while the server builds the export.",
)
@api_command
def models_download(
    ctx: Ctx,
    model: str,
    export_format: str,
    quantization: str | None,
    output: Path | None,
    wait_seconds: int,
) -> None:
    """Download MODEL: a .tar of a folder (adapter, merged) or a .gguf file."""
    if quantization and export_format != "gguf":
        fail("--quantization applies to --format gguf only")
    params = {"format": export_format, **({"quantization": quantization} if quantization else {})}
    err = console(stderr=True)
    progress = transfer_progress("Downloading", ctx.json)
    task = progress.add_task(model, total=None)
    deadline = time.monotonic() + wait_seconds
    shown: str | None = None
    with progress:
        while True:
            result = ctx.client.download(
                f"/v1/models/{model}/content",
                params,
                output,
                on_start=lambda total: progress.update(task, total=total),
                on_progress=lambda n: progress.advance(task, n),
            )
            if isinstance(result, Path):
                break
            status = str(result.get("status"))
            if status != shown and not ctx.json:
                err.print(f"Export {escape(status)}: the server is building it...")
                shown = status
            if time.monotonic() > deadline:
                fail(f"The export is still {status} after {wait_seconds} s; run this again later.")
            time.sleep(5)
    if ctx.json:
        ctx.emit_json({"model": model, "format": export_format, "path": str(result)})
        return
    ctx.out.print(str(result), highlight=False)


@models.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--base-model", default=None, help="The base it was trained from (see `ls`).")
@click.option("--suffix", default=None, help="A name to put in the new model's id.")
@api_command
def models_import(ctx: Ctx, path: Path, base_model: str | None, suffix: str | None) -> None:
    """Import PATH (a LoRA adapter or model folder, or an archive of one) as an ft: model."""
    with tempfile.TemporaryDirectory() as scratch:
        archive = path
        if path.is_dir():
            archive = Path(scratch) / f"{path.name or 'model'}.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(path, arcname=path.name or "model")
        uploaded = upload_with_progress(ctx.client, archive, "user_data", quiet=ctx.json)
    body: dict[str, Any] = {"file_id": uploaded["id"]}
    if base_model:
        body["base_model"] = base_model
    if suffix:
        body["suffix"] = suffix
    model = ctx.client.post("/v1/models", body)
    if ctx.json:
        ctx.emit_json(model)
        return
    ctx.out.print(model["id"], highlight=False)


@models.command("rm")
@click.argument("model")
@api_command
def models_rm(ctx: Ctx, model: str) -> None:
    """Delete one of your fine-tuned models (and its downloads)."""
    ctx.client.request("DELETE", f"/v1/models/{model}")
    if ctx.json:
        ctx.emit_json({"id": model, "deleted": True})
        return
    ctx.out.print(f"Deleted {model}", highlight=False)
