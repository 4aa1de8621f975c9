"""The migrations build exactly the tables the ORM declares, on SQLite and Postgres, and the
continued-training columns are filled in for jobs that existed before them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

import app.orm  # noqa: F401  (every table on the metadata)
from app.migrate import alembic_config, upgrade
from app.orm.base import Base
from tests.conftest import new_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        database = new_postgres_database()
    else:
        database = contextlib.nullcontext(f"sqlite:///{tmp_path / 'migrations.db'}")
    with database as url:
        yield url


def test_migrations_match_the_orm(empty_database: str) -> None:
    upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_older_jobs_name_their_base_model(empty_database: str) -> None:
    upgrade(empty_database, "0003")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO projects (id, name, created_at) "
                    "VALUES ('proj_m', 'm', CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO fine_tuning_jobs (id, project_id, model, training_file, seed, "
                    "method_type, hyperparameters, status, result_files, created_at, attempt) "
                    "VALUES ('ftjob-m', 'proj_m', 'tuna-tiny-test', 'file-x', 1, 'supervised', "
                    "'{}', 'succeeded', '[]', CURRENT_TIMESTAMP, 1)"
                )
            )
        upgrade(empty_database)
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT model, base_model, init_from FROM fine_tuning_jobs")
            ).one()
        assert tuple(row) == ("tuna-tiny-test", "tuna-tiny-test", None)
        command.downgrade(alembic_config(empty_database), "0003")
    finally:
        engine.dispose()
