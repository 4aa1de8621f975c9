"""Engine, sessions, and the one place where transactions end.

Requests get a session through the `get_session` dependency: it commits when the endpoint
returns and rolls back when it raises. Work that must only happen once the data is durable
(enqueueing a job, moving an uploaded file into place) is registered with `after_commit`;
clean-up for a failed transaction with `after_rollback`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_AFTER_COMMIT = "tuna_after_commit"
_AFTER_ROLLBACK = "tuna_after_rollback"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_commit", _run_hooks(_AFTER_COMMIT, _AFTER_ROLLBACK))
        event.listen(self.sessions, "after_rollback", _run_hooks(_AFTER_ROLLBACK, _AFTER_COMMIT))

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any exception."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the worker write progress while the API reads; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def after_commit(session: Session, hook: Callable[[], None]) -> None:
    session.info.setdefault(_AFTER_COMMIT, []).append(hook)


def after_rollback(session: Session, hook: Callable[[], None]) -> None:
    session.info.setdefault(_AFTER_ROLLBACK, []).append(hook)


def _run_hooks(key: str, other: str) -> Callable[[Session], None]:
    def run(session: Session) -> None:
        hooks = session.info.pop(key, [])
        session.info.pop(other, None)
        for hook in hooks:
            hook()

    return run


def get_session(request: Request) -> Iterator[Session]:
    database: Database = request.app.state.db
    with database.session_scope() as session:
        yield session
