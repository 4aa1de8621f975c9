"""Eval runs executed by a real worker, end to end through the official SDK, on the tiny model.

A run answers every item with the model (through the batching engine), grades each answer
against every testing criterion, writes one output item per item and totals them up; an item
whose template names a field it lacks is errored without failing the run; a canceled run stays
canceled; a run whose model is gone fails with a clear error; a run that an earlier attempt
left half-written resumes without writing any item twice.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import openai
import pytest
from sqlalchemy import select

from app.db import Database
from app.evals.repository import EvalRepository
from app.files.storage import LocalStorage
from app.ids import new_id
from app.inference.engine import create_engine
from app.migrate import upgrade
from app.orm import Eval, EvalOutputItem, EvalRun, Project
from app.orm.base import utcnow
from tests.conftest import LiveServer, WorkerProcess
from worker.eval_runs import EvalRunner
from worker.reconciler import UNSENT_GRACE, Reconciler

pytestmark = pytest.mark.slow

MODEL = "tuna-tiny-test"
DONE = {"completed", "failed", "canceled"}
ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string"},
        "answer": {"type": "string"},
        "hint": {"type": "string"},
    },
    "required": ["question", "answer"],
}
CRITERIA: list[dict[str, Any]] = [
    {  # the tiny model's random weights never answer exactly "Paris": always a pass
        "type": "string_check",
        "name": "not verbatim",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "operation": "ne",
    },
    {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.0,
    },
]
TEMPLATE = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "{{ item.question }} (hint: {{ item.hint }})"},
]
ROWS = [
    {"item": {"question": "Capital of France?", "answer": "Paris", "hint": "P"}},
    {"question": "Capital of Italy?", "answer": "Rome", "hint": "R"},  # a bare object
    {"item": {"question": "Capital of Spain?", "answer": "Madrid", "hint": "M"}},
    {"item": {"question": "Capital of Peru?", "answer": "Lima"}},  # no hint: errored
]


def upload(client: openai.OpenAI, rows: list[dict[str, Any]]) -> str:
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    return client.files.create(file=("items.jsonl", io.BytesIO(data)), purpose="evals").id  # type: ignore[arg-type]


def create_eval(client: openai.OpenAI) -> Any:
    return client.evals.create(
        name="capitals",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
    )


def data_source(source: dict[str, Any], model: str = MODEL, tokens: int = 8) -> dict[str, Any]:
    return {
        "type": "completions",
        "source": source,
        "input_messages": {"type": "template", "template": TEMPLATE},
        "model": model,
        "sampling_params": {"temperature": 0, "max_completions_tokens": tokens, "seed": 3},
    }


def wait_for_run(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in DONE:
            return run
        assert time.monotonic() < deadline, f"run stuck in {run.status}"
        time.sleep(0.5)


def test_a_run_answers_grades_and_totals_every_item(
    client: openai.OpenAI, worker: WorkerProcess
) -> None:
    evaluation = create_eval(client)
    file_id = upload(client, ROWS)
    run = client.evals.runs.create(
        evaluation.id,
        name="base",
        data_source=data_source({"type": "file_id", "id": file_id}),  # type: ignore[arg-type]
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.to_dict() == {"total": 4, "errored": 1, "failed": 0, "passed": 3}
    per_criterion = [r.to_dict() for r in done.per_testing_criteria_results]
    assert [{k: r[k] for k in ("testing_criteria", "passed", "failed")} for r in per_criterion] == [
        {"testing_criteria": "not verbatim", "passed": 3, "failed": 0},
        {"testing_criteria": "similar", "passed": 3, "failed": 0},
    ]
    # Tuna's extension: the mean score of the verdicts (a passed string check scores 1).
    assert per_criterion[0]["average_score"] == 1.0
    assert 0.0 <= per_criterion[1]["average_score"] <= 1.0
    (usage,) = done.per_model_usage
    assert (usage.model_name, usage.invocation_count, usage.cached_tokens) == (MODEL, 3, 0)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0

    items = sorted(
        client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=2),
        key=lambda i: i.datasource_item_id,
    )
    assert [i.datasource_item_id for i in items] == [0, 1, 2, 3]
    assert [i.status for i in items] == ["pass", "pass", "pass", "error"]
    assert items[1].datasource_item == ROWS[1]
    first = items[0]
    results = [r.to_dict() for r in first.results]
    assert [r["name"] for r in results] == ["not verbatim", "similar"]
    assert all(r["passed"] for r in results)
    assert results[0]["type"] == "string-check-grader"
    assert first.sample.model == MODEL
    assert first.sample.input[1].content == "Capital of France? (hint: P)"
    assert first.sample.output[0].role == "assistant"
    assert first.sample.max_completion_tokens == 8 and first.sample.seed == 3
    assert first.sample.usage.completion_tokens <= 8
    errored = items[3]
    assert errored.results == []
    assert errored.sample.error is not None and "hint" in errored.sample.error.message
    assert errored.sample.output == []

    passing = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, status="fail")
    assert passing.data == []


def test_a_canceled_run_stays_canceled(client: openai.OpenAI, worker: WorkerProcess) -> None:
    evaluation = create_eval(client)
    content = [
        {"item": {"question": f"Question {n}?", "answer": "x", "hint": "y"}} for n in range(48)
    ]
    run = client.evals.runs.create(
        evaluation.id,
        data_source=data_source({"type": "file_content", "content": content}, tokens=64),  # type: ignore[arg-type]
    )
    canceled = client.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    time.sleep(3)  # a worker that had started stops at its next batch and leaves it canceled
    again = client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert again.status == "canceled"
    written = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    assert len(written) < len(content)


def test_another_projects_model_is_404_at_create(server: LiveServer, client: openai.OpenAI) -> None:
    evaluation = create_eval(client)
    for model in ("ft:tuna-tiny-test:someone-else:x:ftjob-abc", "no-such-model"):
        with pytest.raises(openai.NotFoundError):
            client.evals.runs.create(
                evaluation.id,
                data_source=data_source(
                    {"type": "file_content", "content": [{"item": ROWS[0]["item"]}]}, model
                ),  # type: ignore[arg-type]
            )


def _queued_run(server: LiveServer, eval_id: str, model: str, items: list[dict[str, Any]]) -> str:
    """A run row as the API writes it, never sent to the broker (this test runs it itself)."""
    run_id = new_id("evalrun_")
    with server.app.state.db.session_scope() as session:
        row = session.get(Eval, eval_id)
        assert row is not None
        EvalRepository(session).add_run(
            EvalRun(
                id=run_id,
                eval_id=eval_id,
                project_id=row.project_id,
                name="direct",
                model=model,
                data_source={
                    **data_source({"type": "file_content", "content": items}, model),
                    "sampling_params": {"temperature": 0, "max_completions_tokens": 4},
                },
                status="queued",
                items_total=len(items),
                items_done=0,
                # Marked sent: the session worker's reconciler leaves it to this test.
                enqueued_at=utcnow(),
                created_at=utcnow(),
            )
        )
    return run_id


def _runner(server: LiveServer) -> EvalRunner:
    storage = LocalStorage(server.settings.resolved_storage_dir)
    engine = create_engine(server.settings, storage)
    return EvalRunner(
        settings=server.settings,
        database=server.app.state.db,
        storage=storage,
        worker_id="test-worker",
        engine=lambda: engine,
    )


def test_a_run_whose_model_is_gone_fails_clearly(server: LiveServer, client: openai.OpenAI) -> None:
    evaluation = create_eval(client)
    run_id = _queued_run(
        server, evaluation.id, "ft:tuna-tiny-test:gone:x:ftjob-gone", [{"item": ROWS[0]["item"]}]
    )
    _runner(server).run(run_id)
    failed = client.evals.runs.retrieve(run_id, eval_id=evaluation.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "model_not_found"
    assert "ft:tuna-tiny-test:gone:x:ftjob-gone" in failed.error.message
    _runner(server).run(run_id)  # a repeat delivery of a finished run changes nothing
    assert client.evals.runs.retrieve(run_id, eval_id=evaluation.id).status == "failed"


def test_a_resumed_run_skips_the_items_already_written(
    server: LiveServer, client: openai.OpenAI
) -> None:
    """An attempt that died after writing item 0 (its lease expired, the reconciler queued the
    run again): the next attempt writes the other items only, and totals all of them."""
    evaluation = create_eval(client)
    items = [{"item": row.get("item", row)} for row in ROWS[:3]]
    run_id = _queued_run(server, evaluation.id, MODEL, items)
    with server.app.state.db.session_scope() as session:
        evals = EvalRepository(session)
        run = evals.reload_run(run_id)
        assert run is not None
        run.attempt = 1
        evals.add_output_item(
            run,
            datasource_item_id=0,
            datasource_item=items[0]["item"],
            sample={"output": [{"role": "assistant", "content": "earlier"}], "usage": {}},
            results=[
                {
                    "name": "not verbatim",
                    "type": "string-check-grader",
                    "passed": False,
                    "score": 0.0,
                    "sample": None,
                },
                {
                    "name": "similar",
                    "type": "text-similarity-grader",
                    "passed": True,
                    "score": 0.1,
                    "sample": None,
                },
            ],
            status="fail",
        )
    _runner(server).run(run_id)
    done = client.evals.runs.retrieve(run_id, eval_id=evaluation.id)
    assert done.status == "completed", done.error
    assert done.result_counts.to_dict() == {"total": 3, "errored": 0, "failed": 1, "passed": 2}
    with server.app.state.db.session_scope() as session:
        rows = session.scalars(select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)).all()
        assert sorted(r.datasource_item_id for r in rows) == [0, 1, 2]
        earlier = next(r for r in rows if r.datasource_item_id == 0)
        assert earlier.sample is not None and earlier.sample["output"][0]["content"] == "earlier"
        run = session.get(EvalRun, run_id)
        assert run is not None and (run.attempt, run.items_done) == (2, 3)


def test_the_reconciler_requeues_lost_runs_and_sends_unsent_ones(tmp_path) -> None:
    """A private database: no session worker's reconciler competes for these rows."""
    url = f"sqlite:///{tmp_path / 'reconcile.db'}"
    upgrade(url)
    db = Database(url)
    now = utcnow()
    with db.session_scope() as session:
        project = Project(id=f"proj_{uuid.uuid4().hex[:20]}", name=f"rec-{uuid.uuid4().hex}")
        session.add(project)
        session.flush()
        row = Eval(
            id=new_id("eval_"),
            project_id=project.id,
            data_source_config={},
            testing_criteria=[],
        )
        session.add(row)
        session.flush()

        def add(status: str, **values: Any) -> str:
            run = EvalRun(
                id=new_id("evalrun_"),
                eval_id=row.id,
                project_id=project.id,
                model=MODEL,
                data_source={},
                status=status,
                **values,
            )
            session.add(run)
            session.flush()
            return run.id

        old = now - UNSENT_GRACE - timedelta(seconds=5)
        dead = add(
            "in_progress",
            lease_expires_at=now - timedelta(seconds=1),
            created_at=old,
            enqueued_at=old,
            worker_id="gone",
        )
        alive = add(
            "in_progress",
            lease_expires_at=now + timedelta(minutes=1),
            created_at=old,
            enqueued_at=old,
        )
        unsent = add("queued", created_at=old)
        fresh = add("queued", created_at=now)  # the API still has time to send it
        sent_already = add("queued", created_at=old, enqueued_at=old)
    jobs: list[str] = []
    runs: list[str] = []
    reconciler = Reconciler(db, jobs.append, send_eval_run=runs.append)

    assert sorted(reconciler.run_once()) == sorted([dead, unsent])
    assert sorted(runs) == sorted([dead, unsent]) and jobs == []
    runs.clear()
    reconciler.run_once()
    assert runs == []  # each is sent once
    reconciler.run_once(resend_waiting=True)  # a worker's start re-sends every queued run
    assert sorted(runs) == sorted([dead, unsent, fresh, sent_already])
    with db.session_scope() as session:
        status = dict(session.execute(select(EvalRun.id, EvalRun.status)).tuples().all())
    assert (status[dead], status[alive]) == ("queued", "in_progress")
    # Without `send_eval_run` (an older caller), runs are left alone.
    assert Reconciler(db, jobs.append).run_once(resend_waiting=True) == []
    db.dispose()


def test_a_sigkilled_worker_s_run_is_resumed_by_another_worker(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own server and workers: the first worker is killed mid-run; once the lease expires
    the run goes back to the queue, a new worker finishes it and no item is written twice."""
    from app.bootstrap import prepare
    from app.main import create_app
    from tests.conftest import make_settings, serve_in_thread

    # A small batch, so items finish (and are written) a few at a time.
    monkeypatch.setenv("TUNA_INFERENCE_MAX_BATCH_SIZE", "4")
    settings = make_settings(tmp_path / "data", None, job_lease_seconds=10.0)
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    workers: list[WorkerProcess] = []
    try:
        client = live.client(live.new_key())
        evaluation = create_eval(client)
        content = [
            {"item": {"question": f"Question {n}?", "answer": "x", "hint": "y"}} for n in range(40)
        ]
        workers.append(WorkerProcess(settings, tmp_path / "worker-0.log"))
        workers[0].start()
        run = client.evals.runs.create(
            evaluation.id,
            data_source=data_source({"type": "file_content", "content": content}, tokens=24),  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + 180
        while True:
            with app.state.db.session_scope() as session:
                row = session.get(EvalRun, run.id)
                assert row is not None
                status, written = row.status, row.items_done
            if status == "in_progress" and written >= 8:
                break
            assert status in ("queued", "in_progress"), status
            assert time.monotonic() < deadline, "the run did not progress"
            time.sleep(0.1)
        workers[0].kill()
        assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "in_progress"

        workers.append(WorkerProcess(settings, tmp_path / "worker-1.log"))
        workers[1].start()
        done = wait_for_run(client, evaluation.id, run.id, timeout=240)
        assert done.status == "completed", done.error
        assert done.result_counts.to_dict() == {
            "total": 40,
            "errored": 0,
            "failed": 0,
            "passed": 40,
        }
        with app.state.db.session_scope() as session:
            ids = session.scalars(
                select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run.id)
            ).all()
            row = session.get(EvalRun, run.id)
            assert row is not None and row.attempt == 2 and row.items_done == 40
        assert sorted(ids) == list(range(40))
    finally:
        for process in workers:
            process.stop()
        stop()


def test_a_model_grader_is_judged_by_the_engine(server: LiveServer, client: openai.OpenAI) -> None:
    """The judge runs on the same engine from the grading thread; whatever the tiny model
    answers is recorded raw in the grade's sample, and its calls count in the run's usage."""
    evaluation = client.evals.create(
        name="judged",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[
            {
                "type": "label_model",
                "name": "judge",
                "model": MODEL,
                "input": [
                    {"role": "system", "content": "Say yes or no."},
                    {"role": "user", "content": "Is {{ sample.output_text }} {{ item.answer }}?"},
                ],
                "labels": ["yes", "no"],
                "passing_labels": ["yes"],
            }
        ],  # type: ignore[list-item]
    )
    items = [{"item": row.get("item", row)} for row in ROWS[:2]]
    run_id = _queued_run(server, evaluation.id, MODEL, items)
    _runner(server).run(run_id)
    done = client.evals.runs.retrieve(run_id, eval_id=evaluation.id)
    assert done.status == "completed", done.error
    assert done.result_counts.total == 2
    (usage,) = done.per_model_usage  # the run's 2 answers and the judge's 2 calls
    assert (usage.model_name, usage.invocation_count) == (MODEL, 4)
    for item in client.evals.runs.output_items.list(run_id, eval_id=evaluation.id):
        (result,) = [r.to_dict() for r in item.results]
        assert result["type"] == "label-model-grader"
        assert result["sample"]["model"] == MODEL
        assert result["sample"]["input"][1]["content"].endswith(
            f"{item.datasource_item['answer']}?"
        )
        assert result["sample"]["output"][0]["role"] == "assistant"
