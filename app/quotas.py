"""Per-project quota checks that hold under concurrent requests.

A check is "count what the project has, refuse if one more is too many, then insert". Two
requests doing that side by side could both pass the count; `hold_project` makes them queue up.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.orm import Project


def hold_project(session: Session, project_id: str) -> None:
    """Serialise this transaction with every other one holding the same project until commit.

    A no-op write to the project's row: Postgres takes the row lock, SQLite the database's write
    lock, and either is released only when the request commits or rolls back. A count run after
    this call therefore sees every insert of a transaction that held the project before it.
    """
    session.execute(
        update(Project)
        .where(Project.id == project_id)
        .values(id=Project.id)
        .execution_options(synchronize_session=False)
    )
