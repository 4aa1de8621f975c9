"""Engine, sessions, and the one place where transactions end.

Requests get a session through the `get_session` dependency: it commits when the endpoint
returns and rolls back when it raises. Work that must only happen once the data is durable
(enqueueing a job, moving an uploaded file into place) is registered with `after_commit`;
clean-up for a failed transaction with `after_rollback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger("tuna.db")

_AFTER_COMMIT = "tuna_after_commit"
_AFTER_ROLLBACK = "tuna_after_rollback"
_READY = "tuna_commit_hooks_ready"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_commit", _commit_hooks_ready)
        event.listen(self.sessions, "after_rollback", _run_rollback_hooks)

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any exception.

        After-commit hooks run once the session has given its connection back, so a hook that
        opens a session of its own can never wait on the pool its caller is holding.
        """
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            ready = session.info.pop(_READY, [])
            session.close()
            for hook in ready:
                hook()

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    # Room for every thread of the API's threadpool (40) to hold a connection at once.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 20, "max_overflow": 30}
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


def send_after_commit(
    session: Session, what: str, send: Callable[[], object], record: Callable[[Session], object]
) -> None:
    """Once ``session`` commits: ``send`` the broker message for ``what``, then ``record`` that
    it was sent (``enqueued_at``) in a transaction of its own.

    The row is committed first, so a broker hiccup must not turn the request into a 500: a
    failed send is logged and the row keeps ``enqueued_at`` empty for a worker's reconciler to
    send instead (the same covers this process dying between the commit and the send). A failed
    record only means the reconciler may send a harmless duplicate.
    """
    bind = session.get_bind()

    def hook() -> None:
        try:
            send()
        except Exception:
            logger.exception("could not enqueue %s; a worker's reconciler will", what)
            return
        try:
            with Session(bind) as recording, recording.begin():
                record(recording)
        except Exception:
            logger.warning("could not record that %s was enqueued", what, exc_info=True)

    after_commit(session, hook)


def after_rollback(session: Session, hook: Callable[[], None]) -> None:
    session.info.setdefault(_AFTER_ROLLBACK, []).append(hook)


def _commit_hooks_ready(session: Session) -> None:
    session.info.setdefault(_READY, []).extend(session.info.pop(_AFTER_COMMIT, []))
    session.info.pop(_AFTER_ROLLBACK, None)


def _run_rollback_hooks(session: Session) -> None:
    # Clean-up of what the failed transaction staged (files on disk): no database needed.
    session.info.pop(_AFTER_COMMIT, None)
    for hook in session.info.pop(_AFTER_ROLLBACK, []):
        hook()


def get_session(request: Request) -> Iterator[Session]:
    database: Database = request.app.state.db
    with database.session_scope() as session:
        yield session
