"""The job state machine on real databases: every allowed move, every forbidden one, and races.

The schema comes from the migrations (not `create_all`), so this also checks that the tables the
state machine writes exist as the migrations build them.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, update

from app.db import Database
from app.fine_tuning.state import ALLOWED_MOVES, TERMINAL, JobStatus, can_move, transition
from app.migrate import upgrade
from app.orm import FineTuningJob, Project
from app.orm.base import utcnow

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))
ALLOWED = [(s, t) for s, t in ALL_PAIRS if t in ALLOWED_MOVES[s]]
FORBIDDEN = [(s, t) for s, t in ALL_PAIRS if t not in ALLOWED_MOVES[s]]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('state')) / 'state.db'}"
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def project_id(database: Database) -> str:
    with database.session_scope() as session:
        project = Project(id=f"proj_{uuid.uuid4().hex[:20]}", name=f"state-{uuid.uuid4().hex}")
        session.add(project)
    return project.id


def new_job(database: Database, project_id: str, status: JobStatus) -> str:
    """A job row put straight into `status` (bypassing the state machine on purpose)."""
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    with database.session_scope() as session:
        session.add(
            FineTuningJob(
                id=job_id,
                project_id=project_id,
                model="tuna-tiny-test",
                training_file="file-x",
                seed=1,
                hyperparameters={},
                status=JobStatus.VALIDATING_FILES.value,
                result_files=[],
                # Marked as sent, so that no worker's reconciler sends this row to a broker.
                enqueued_at=utcnow(),
            )
        )
        session.flush()
        session.execute(
            update(FineTuningJob).where(FineTuningJob.id == job_id).values(status=status.value)
        )
    return job_id


def snapshot(database: Database, job_id: str) -> dict[str, Any]:
    with database.session_scope() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        return {attr.key: getattr(job, attr.key) for attr in inspect(FineTuningJob).column_attrs}


def test_table_covers_every_status() -> None:
    assert set(ALLOWED_MOVES) == set(JobStatus)
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == TERMINAL
    assert len(ALLOWED) + len(FORBIDDEN) == len(JobStatus) ** 2


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=lambda s: s.value)
def test_allowed_move(
    database: Database, project_id: str, source: JobStatus, target: JobStatus
) -> None:
    job_id = new_job(database, project_id, source)
    finished = utcnow().replace(microsecond=0) + timedelta(seconds=5)
    with database.session_scope() as session:
        assert transition(session, job_id, target, finished_at=finished)
        # The loaded instance is kept in step with the row.
        job = session.get(FineTuningJob, job_id)
        assert job is not None and job.status == target.value
    after = snapshot(database, job_id)
    assert (after["status"], after["finished_at"]) == (target.value, finished)
    assert can_move(source, target)


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: s.value)
def test_forbidden_move_changes_nothing(
    database: Database, project_id: str, source: JobStatus, target: JobStatus
) -> None:
    job_id = new_job(database, project_id, source)
    before = snapshot(database, job_id)
    with database.session_scope() as session:
        assert not transition(session, job_id, target, finished_at=utcnow(), error_code="x")
    assert snapshot(database, job_id) == before
    assert not can_move(source, target)


def test_only_from_narrows_the_sources(database: Database, project_id: str) -> None:
    job_id = new_job(database, project_id, JobStatus.QUEUED)
    with database.session_scope() as session:
        # queued -> succeeded is not allowed anyway; queued -> cancelled is, but not from here.
        assert not transition(session, job_id, JobStatus.CANCELLED, only_from={JobStatus.RUNNING})
        assert not transition(session, job_id, JobStatus.SUCCEEDED)
    assert snapshot(database, job_id)["status"] == "queued"
    with database.session_scope() as session:
        assert transition(session, job_id, JobStatus.RUNNING, only_from={JobStatus.QUEUED})
    assert snapshot(database, job_id)["status"] == "running"


def test_unknown_job_is_not_moved(database: Database) -> None:
    with database.session_scope() as session:
        assert not transition(session, "ftjob-nope", JobStatus.CANCELLED)


def test_running_a_move_twice_is_harmless(database: Database, project_id: str) -> None:
    job_id = new_job(database, project_id, JobStatus.VALIDATING_FILES)
    results = []
    for _ in range(2):
        with database.session_scope() as session:
            results.append(transition(session, job_id, JobStatus.QUEUED))
    assert results == [True, False]
    assert snapshot(database, job_id)["status"] == "queued"


@pytest.mark.parametrize("round_", range(10))
def test_cancel_racing_success_has_one_winner(
    database: Database, project_id: str, round_: int
) -> None:
    """Two sessions (the API cancelling, the worker finishing) hit the same running job."""
    job_id = new_job(database, project_id, JobStatus.RUNNING)
    barrier = threading.Barrier(2)
    outcome: dict[JobStatus, bool] = {}
    errors: list[BaseException] = []

    def mover(target: JobStatus, only_from: set[JobStatus] | None) -> None:
        try:
            barrier.wait(timeout=10)
            with database.session_scope() as session:
                outcome[target] = transition(
                    session, job_id, target, only_from=only_from, finished_at=utcnow()
                )
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [
        threading.Thread(target=mover, args=(JobStatus.CANCELLED, None)),
        threading.Thread(target=mover, args=(JobStatus.SUCCEEDED, {JobStatus.RUNNING})),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    winners = [target for target, moved in outcome.items() if moved]
    assert len(outcome) == 2 and len(winners) == 1, outcome
    assert snapshot(database, job_id)["status"] == winners[0].value
