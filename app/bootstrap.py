"""First-start work shared by `tuna serve` and `tuna keys`: schema, default project, keys."""

from __future__ import annotations

from dataclasses import dataclass

from app.auth import add_key, get_or_create_project, project_has_keys
from app.config import Settings
from app.db import Database
from app.migrate import upgrade


def prepare(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.resolved_storage_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


@dataclass
class DefaultKey:
    key: str | None  # set only when this call created it (it is shown once)
    from_env: bool


def ensure_default_key(settings: Settings) -> DefaultKey:
    """`TUNA_API_KEY` is honoured as a key of the default project; otherwise one is made once."""
    database = Database(settings.resolved_database_url)
    try:
        with database.session_scope() as session:
            project = get_or_create_project(session, settings.default_project)
            if settings.api_key:
                add_key(session, project, settings.api_key)
                return DefaultKey(key=None, from_env=True)
            if project_has_keys(session, project):
                return DefaultKey(key=None, from_env=False)
            return DefaultKey(key=add_key(session, project), from_env=False)
    finally:
        database.dispose()


def create_key(settings: Settings, project_name: str) -> str:
    database = Database(settings.resolved_database_url)
    try:
        with database.session_scope() as session:
            return add_key(session, get_or_create_project(session, project_name))
    finally:
        database.dispose()
