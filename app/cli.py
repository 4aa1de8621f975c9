"""`tuna`: run the service (`serve`, `worker`) and manage keys."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click

from app.config import Settings

PROJECT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        # Children (the worker) read the same settings from the environment.
        os.environ["TUNA_DATA_DIR"] = str(data_dir)
        return Settings(data_dir=data_dir)
    return Settings()


@click.group()
def main() -> None:
    """Tuna: self-hosted fine-tuning with the OpenAI API."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--data-dir", type=click.Path(path_type=Path), help="Default: ./var (TUNA_DATA_DIR)")
@click.option("--worker/--no-worker", default=True, show_default=True, help="Start a worker too")
def serve(host: str, port: int, data_dir: Path | None, worker: bool) -> None:
    """Start the API (and one training worker) on embedded defaults, applying migrations first."""
    import uvicorn

    from app.bootstrap import ensure_default_key, prepare
    from app.main import create_app

    settings = _settings(data_dir)
    prepare(settings)
    default_key = ensure_default_key(settings)
    url = f"http://{host}:{port}"
    click.echo(f"Tuna is running at {url}  (OpenAI base_url: {url}/v1)")
    if default_key.key:
        click.echo(f"API key (shown once): {default_key.key}")
    elif default_key.from_env:
        click.echo("API key: the value of TUNA_API_KEY")
    else:
        click.echo(
            "API key: created on first start; make another with "
            f"`tuna keys create --project {settings.default_project}`"
        )
    worker_process = _start_worker(1, settings.training_queue) if worker else None
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        if worker_process is not None:
            worker_process.terminate()
            worker_process.wait(timeout=30)


def _worker_command(concurrency: int, queue: str, loglevel: str = "info") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queue,
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]


def _start_worker(concurrency: int, queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_worker_command(concurrency, queue), preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """Linux: SIGTERM the worker when `tuna serve` exits, even if it is killed outright.

    uvicorn re-raises the signal that stopped it, so a `finally` in serve() never runs on
    `docker stop` or Ctrl-C; the kernel's parent-death signal covers every way out.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the `finally` in serve() is the fallback


@main.command()
@click.option("--concurrency", default=1, show_default=True, help="Jobs at once (one per GPU)")
@click.option("--data-dir", type=click.Path(path_type=Path))
def worker(concurrency: int, data_dir: Path | None) -> None:
    """Run a training worker against the configured database and broker."""
    from app.bootstrap import prepare

    settings = _settings(data_dir)
    prepare(settings)
    command = _worker_command(concurrency, settings.training_queue)
    os.execv(command[0], command)


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path))
def migrate(data_dir: Path | None) -> None:
    """Apply database migrations (done by `serve` too)."""
    from app.bootstrap import prepare

    prepare(_settings(data_dir))
    click.echo("Database is up to date.")


@main.group()
def keys() -> None:
    """API keys (each belongs to a project)."""


@keys.command("create")
@click.option("--project", "project_name", required=True, help="Project (tenant) name")
@click.option("--data-dir", type=click.Path(path_type=Path))
def keys_create(project_name: str, data_dir: Path | None) -> None:
    """Create a key for a new or existing project; the key is the last line printed."""
    from app.bootstrap import create_key, prepare

    if not PROJECT_NAME.match(project_name):
        raise click.BadParameter("use 1-64 letters, digits, '-' or '_'", param_hint="--project")
    settings = _settings(data_dir)
    prepare(settings)
    click.echo(f"New API key for project '{project_name}':")
    click.echo(create_key(settings, project_name))


@click.command("pull")
@click.argument("model_id")
@click.option("--data-dir", type=click.Path(path_type=Path))
def models_pull(model_id: str, data_dir: Path | None) -> None:
    """Download a Hugging Face model (one of TUNA_HUB_MODELS) into the server's model cache.

    Run on a machine that sees the same model cache (TUNA_MODEL_CACHE_DIR or TUNA_DATA_DIR)
    and can reach the hub, so that offline workers find it there. HF_TOKEN for gated models.
    """
    from tuna_core.base_models import ModelNotAvailable, check_hub_id, pull_hub_model

    settings = _settings(data_dir)
    try:
        check_hub_id(model_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="MODEL_ID") from None
    if model_id not in settings.hub_models:
        click.echo(f"Note: {model_id} is not in TUNA_HUB_MODELS; jobs cannot name it yet.")
    try:
        folder = pull_hub_model(model_id, settings.resolved_model_cache_dir)
    except ModelNotAvailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{model_id} is in {folder}")


def _register_client_commands() -> None:
    # `tuna files|jobs|chat` talk HTTP to a server; they live in their own package.
    from app.client_cli import COMMANDS

    for command in COMMANDS:
        main.add_command(command)
        if command.name == "models" and isinstance(command, click.Group):
            command.add_command(models_pull)  # the one server-side `models` command


_register_client_commands()


if __name__ == "__main__":
    main()
