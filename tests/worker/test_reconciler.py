"""The reconciler on real databases and a real Redis: which jobs it sends, and only once.

Each database here is private to the test module, so no session worker's own reconciler
competes for the same rows.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.db import Database
from app.fine_tuning.state import JobStatus
from app.migrate import upgrade
from app.orm import FineTuningEvent, FineTuningJob, Project
from app.orm.base import utcnow
from tests.conftest import new_postgres_database
from worker.broker_memory import FolderMemory, RedisMemory
from worker.reconciler import UNSENT_GRACE, Reconciler


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    if request.param == "postgres":
        database_url = new_postgres_database()
    else:
        path = Path(tmp_path_factory.mktemp("reconcile")) / "reconcile.db"
        database_url = contextlib.nullcontext(f"sqlite:///{path}")
    with database_url as url:
        upgrade(url)
        db = Database(url)
        yield db
        db.dispose()


@pytest.fixture
def project_id(database: Database) -> str:
    with database.session_scope() as session:
        project = Project(id=f"proj_{uuid.uuid4().hex[:20]}", name=f"rec-{uuid.uuid4().hex}")
        session.add(project)
    return project.id


@pytest.fixture(autouse=True)
def only_this_tests_jobs(database: Database) -> Iterator[None]:
    """Earlier tests' leftovers are finished, so each test sees only the jobs it made."""
    yield
    with database.session_scope() as session:
        session.execute(update(FineTuningJob).values(status=JobStatus.CANCELLED.value))


def add_job(
    database: Database,
    project_id: str,
    status: JobStatus,
    *,
    age: timedelta = timedelta(minutes=5),
    enqueued: bool = False,
    lease_left: timedelta | None = None,
) -> str:
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    now = utcnow()
    with database.session_scope() as session:
        session.add(
            FineTuningJob(
                id=job_id,
                project_id=project_id,
                model="tuna-tiny-test",
                training_file="file-x",
                seed=1,
                hyperparameters={},
                status=status.value,
                result_files=[],
                created_at=now - age,
                enqueued_at=now - age if enqueued else None,
                lease_expires_at=None if lease_left is None else now + lease_left,
                worker_id="gone:1" if status == JobStatus.RUNNING else None,
            )
        )
    return job_id


def job(database: Database, job_id: str) -> FineTuningJob:
    with database.session_scope() as session:
        row = session.get(FineTuningJob, job_id)
        assert row is not None
        session.expunge(row)
        return row


class Forgetful:
    """A broker memory we control: forgets when told to."""

    def __init__(self) -> None:
        self.lost = False

    def forgot(self) -> bool:
        lost, self.lost = self.lost, False
        return lost


def test_unsent_jobs_past_the_grace_are_sent_once(database: Database, project_id: str) -> None:
    unsent = add_job(database, project_id, JobStatus.VALIDATING_FILES)
    unsent_queued = add_job(database, project_id, JobStatus.QUEUED)
    fresh = add_job(database, project_id, JobStatus.VALIDATING_FILES, age=timedelta(seconds=1))
    already_sent = add_job(database, project_id, JobStatus.QUEUED, enqueued=True)
    paused = add_job(database, project_id, JobStatus.PAUSED)
    sent: list[str] = []
    reconciler = Reconciler(database, sent.append)

    assert sorted(reconciler.run_once()) == sorted([unsent, unsent_queued])
    assert sorted(sent) == sorted([unsent, unsent_queued])
    assert job(database, unsent).enqueued_at is not None
    assert reconciler.run_once() == []  # marked: not sent again
    for untouched in (fresh, already_sent, paused):
        assert untouched not in sent
    assert job(database, fresh).enqueued_at is None  # the API still has time to send it
    assert timedelta(seconds=1) < UNSENT_GRACE


def test_expired_lease_returns_the_job_to_the_queue_and_sends_it(
    database: Database, project_id: str
) -> None:
    dead = add_job(database, project_id, JobStatus.RUNNING, lease_left=timedelta(seconds=-1))
    alive = add_job(database, project_id, JobStatus.RUNNING, lease_left=timedelta(minutes=1))
    sent: list[str] = []

    Reconciler(database, sent.append).run_once()

    assert sent == [dead]
    assert job(database, dead).status == JobStatus.QUEUED
    assert job(database, alive).status == JobStatus.RUNNING
    with database.session_scope() as session:
        messages = [
            e.message for e in session.query(FineTuningEvent).filter(FineTuningEvent.job_id == dead)
        ]
    assert messages == ["Worker lost; job returned to the queue"]


def test_a_broker_that_forgot_gets_every_waiting_job_again(
    database: Database, project_id: str
) -> None:
    waiting = [
        add_job(database, project_id, JobStatus.QUEUED, enqueued=True),
        add_job(database, project_id, JobStatus.VALIDATING_FILES, enqueued=True),
    ]
    add_job(database, project_id, JobStatus.PAUSED, enqueued=True)
    add_job(database, project_id, JobStatus.SUCCEEDED, enqueued=True)
    memory = Forgetful()
    sent: list[str] = []
    reconciler = Reconciler(database, sent.append, memory)

    assert reconciler.run_once() == []
    memory.lost = True
    assert sorted(reconciler.run_once()) == sorted(waiting)
    assert reconciler.run_once() == []


def test_a_new_broker_with_nothing_waiting_is_not_reported_as_a_loss(
    database: Database, project_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A brand-new data folder: the marker is missing because there never was one.
    reconciler = Reconciler(database, [].append, FolderMemory(tmp_path / "queue"))
    with caplog.at_level("WARNING", logger="tuna.worker"):
        assert reconciler.run_once(resend_waiting=True) == []
    assert "lost" not in caplog.text

    memory = Forgetful()
    waiting = add_job(database, project_id, JobStatus.QUEUED, enqueued=True)
    memory.lost = True
    with caplog.at_level("WARNING", logger="tuna.worker"):
        assert Reconciler(database, [].append, memory).run_once() == [waiting]
    assert "the broker lost its messages; re-sending 1 waiting job(s)" in caplog.text


def test_a_failed_send_is_retried_on_the_next_pass(database: Database, project_id: str) -> None:
    job_id = add_job(database, project_id, JobStatus.QUEUED)
    attempts: list[str] = []

    def broken(sent_id: str) -> None:
        attempts.append(sent_id)
        raise ConnectionError("broker down")

    assert Reconciler(database, broken).run_once() == []
    assert job(database, job_id).enqueued_at is None
    sent: list[str] = []
    assert Reconciler(database, sent.append).run_once() == [job_id]
    assert attempts == [job_id]


def test_racing_reconcilers_send_each_job_once(database: Database, project_id: str) -> None:
    jobs = [add_job(database, project_id, JobStatus.QUEUED) for _ in range(10)]
    sent: list[str] = []
    lock = threading.Lock()

    def send(job_id: str) -> None:
        with lock:
            sent.append(job_id)

    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        Reconciler(database, send).run_once()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == sorted(jobs)


def test_folder_memory_notices_a_wiped_folder(tmp_path: Path) -> None:
    memory = FolderMemory(tmp_path)
    assert memory.forgot()  # first look
    assert not memory.forgot()
    assert not FolderMemory(tmp_path).forgot()  # another worker: one marker for all
    for entry in tmp_path.iterdir():
        entry.unlink()
    assert memory.forgot()
    assert not memory.forgot()
    nested = FolderMemory(tmp_path / "queue")  # the whole folder wiped: made again, told once
    assert nested.forgot()
    assert not nested.forgot()


def test_redis_memory_notices_a_flushed_redis(redis_url: str) -> None:
    queue = f"memory-test-{uuid.uuid4().hex[:8]}"
    first, second = RedisMemory(redis_url, queue), RedisMemory(redis_url, queue)
    try:
        assert first.forgot()
        assert not first.forgot()
        assert not second.forgot()
        first.client.delete(first.key)  # what a restart without persistence does to it
        assert second.forgot()
        assert not first.forgot()
    finally:
        first.client.delete(first.key)
