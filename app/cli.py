"""`tuna`: run the service (`serve`, `worker`) and manage keys."""

from __future__ import annotations

import os
import re
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
def serve(host: str, port: int, data_dir: Path | None) -> None:
    """Start the API on embedded defaults (SQLite, local files), applying migrations first."""
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
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


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


if __name__ == "__main__":
    main()
