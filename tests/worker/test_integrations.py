"""A job's integrations run by a real worker: W&B (offline) and MLflow (the local SQLite store)
get the job's config, every step's metrics, its checkpoints and its final status; a paused and
resumed job goes on in the same runs; an integration that cannot run never fails the job.

What was logged is read back with each tool's own reader: MLflow's `MlflowClient`, and W&B's
offline `.wandb` file parsed into wandb's own protobuf `Record`s (wandb has no public reader of
its offline files; the file is LevelDB's log format, read by `wandb_records` below).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, upload, wait_for

# -- reading W&B's offline run files -------------------------------------------------------

_WANDB_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little-endian), version 0
_BLOCK = 32 * 1024
_RECORD_HEADER = 7  # crc32c (4), length (2), type (1): 1 full, 2 first, 3 middle, 4 last


def wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[: len(_WANDB_HEADER)] == _WANDB_HEADER, data[:16]
    pos, pending = len(_WANDB_HEADER), b""
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        else:
            break  # the unwritten rest of the file
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    """One offline run folder (one attempt), as W&B would sync it."""

    folder: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @classmethod
    def read(cls, folder: Path) -> WandbRun:
        (log,) = folder.glob("run-*.wandb")
        run = cls(folder)
        for record in wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run_id, run.project = record.run.run_id, record.run.project
                run.name, run.tags = record.run.display_name, list(record.run.tags)
                for item in record.run.config.update:
                    run.config[_key(item)] = json.loads(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    run.config[_key(item)] = json.loads(item.value_json)
            elif kind == "history":
                row = {_key(item): json.loads(item.value_json) for item in record.history.item}
                step = record.history.step.num
                run.history.setdefault(step, {}).update(row)
            elif kind == "summary":
                for item in record.summary.update:
                    run.summary[_key(item)] = json.loads(item.value_json)
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run


def wandb_runs(settings: Any, job_id: str) -> list[WandbRun]:
    """The job's offline run folders (one per attempt), oldest first."""
    root = settings.data_dir / "wandb" / "wandb"
    return [WandbRun.read(folder) for folder in sorted(root.glob(f"offline-run-*-{job_id}"))]


# -- reading MLflow -------------------------------------------------------------------------


def mlflow_client(settings: Any) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{settings.data_dir.resolve()}/mlflow/mlflow.db")


def mlflow_runs(settings: Any, experiment: str, job_id: str) -> list[Any]:
    client = mlflow_client(settings)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return list(
        client.search_runs([found.experiment_id], filter_string=f"tags.`tuna.job_id` = '{job_id}'")
    )


def metric_steps(settings: Any, run_id: str, key: str) -> dict[int, float]:
    history = mlflow_client(settings).get_metric_history(run_id, key)
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {sorted(steps)}"
    return {m.step: m.value for m in history}


def integrations(project: str, experiment: str) -> list[dict[str, Any]]:
    return [
        {"type": "wandb", "wandb": {"project": project, "name": "adder", "tags": ["nightly"]}},
        {
            "type": "mlflow",
            "mlflow": {"experiment_name": experiment, "tags": {"team": "search"}},
        },
    ]


def metrics_events(client: openai.OpenAI, job_id: str) -> dict[int, dict[str, Any]]:
    return {e.data["step"]: e.data for e in all_events(client, job_id) if e.type == "metrics"}


# -- the tests ------------------------------------------------------------------------------


def test_a_job_logs_its_run_to_wandb_and_mlflow(
    server: LiveServer, client: openai.OpenAI, worker: WorkerProcess
) -> None:
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=upload(client, chat_jsonl(12)),
        validation_file=upload(client, chat_jsonl(10)),
        seed=3,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}},
        },
        integrations=integrations("tuna-tests", experiment),  # type: ignore[arg-type]
        extra_body={"auto_eval": False},
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    events = metrics_events(client, job.id)
    assert sorted(events) == list(range(1, 7))  # 12 examples / 4 x 2 epochs
    checkpoints = {c.step_number: c for c in client.fine_tuning.jobs.checkpoints.list(job.id)}
    assert sorted(checkpoints) == [3, 6]
    messages = [(e.level, e.message) for e in all_events(client, job.id)]
    assert not [m for level, m in messages if level == "warn"], messages
    assert any(m.startswith("Logging to Weights & Biases run") for _, m in messages)
    assert any(m.startswith("Logging to MLflow run") for _, m in messages)

    # W&B: one offline run whose id is the job's.
    (run,) = wandb_runs(server.settings, job.id)
    assert (run.run_id, run.project, run.name) == (job.id, "tuna-tests", "adder")
    assert {"nightly", "tuna/finetune", f"tuna/{job.id}"} <= set(run.tags)
    assert run.config["job_id"] == job.id and run.config["method"] == "supervised"
    assert run.config["n_epochs"] == 2 and run.config["batch_size"] == 4
    assert run.config["learning_rate"] > 0  # resolved once training started
    assert sorted(run.history) == list(range(1, 7))
    for step, row in run.history.items():
        assert row["train_loss"] == pytest.approx(events[step]["train_loss"])
        assert row["train_mean_token_accuracy"] == pytest.approx(
            events[step]["train_mean_token_accuracy"]
        )
    assert any("valid_loss" in row for row in run.history.values())
    assert "full_valid_loss" in run.history[3]  # the checkpoint's whole-file measure
    assert run.summary["status"] == "succeeded"
    assert run.summary["fine_tuned_model"] == done.fine_tuned_model
    assert run.summary["latest_checkpoint"] == checkpoints[6].fine_tuned_model_checkpoint
    assert run.summary["checkpoints/step-3"]["model"] == checkpoints[3].fine_tuned_model_checkpoint
    assert run.exit_code == 0

    # MLflow: one run, found by its job tag.
    (found,) = mlflow_runs(server.settings, experiment, job.id)
    assert found.info.status == "FINISHED"
    assert found.info.run_name == job.id
    tags = found.data.tags
    assert tags["team"] == "search" and tags["tuna.status"] == "succeeded"
    assert tags["tuna.fine_tuned_model"] == done.fine_tuned_model
    assert tags["tuna.checkpoint.step-3"] == checkpoints[3].fine_tuned_model_checkpoint
    assert tags["tuna.latest_checkpoint"] == checkpoints[6].fine_tuned_model_checkpoint
    params = found.data.params
    assert params["n_epochs"] == "2" and params["batch_size"] == "4"
    assert params["base_model"] == "tuna-tiny-test" and params["seed"] == "3"
    losses = metric_steps(server.settings, found.info.run_id, "train_loss")
    assert losses == pytest.approx({step: events[step]["train_loss"] for step in events})
    assert sorted(metric_steps(server.settings, found.info.run_id, "full_valid_loss")) == [3, 6]


def test_a_paused_and_resumed_job_goes_on_in_the_same_runs(
    server: LiveServer, client: openai.OpenAI, worker: WorkerProcess
) -> None:
    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=upload(client, chat_jsonl(20)),
        seed=5,
        hyperparameters={"n_epochs": 3, "batch_size": 1},
        integrations=integrations("tuna-tests", experiment),  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + 120
    while len(metrics_events(client, job.id)) < 5:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.3)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    deadline = time.monotonic() + 60
    while True:  # the worker notices, saves a checkpoint, stops and closes the runs
        runs = mlflow_runs(server.settings, experiment, job.id)
        if runs and runs[0].info.status == "KILLED":
            break
        assert time.monotonic() < deadline, "the MLflow run was never closed"
        time.sleep(0.3)
    (run,) = runs
    assert run.data.tags["tuna.status"] == "paused"
    while True:
        (paused,) = wandb_runs(server.settings, job.id)
        if paused.exit_code is not None:
            break
        assert time.monotonic() < deadline, "the W&B run was never finished"
        time.sleep(0.3)
    assert paused.summary["status"] == "paused" and paused.exit_code == 0

    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in all_events(client, job.id)]
    assert sum(m.startswith("Continuing MLflow run") for m in messages) == 1

    # W&B: the second attempt's folder has the same run id; together every step once.
    first, second = wandb_runs(server.settings, job.id)
    assert first.run_id == second.run_id == job.id
    assert not set(first.history) & set(second.history)
    assert sorted({*first.history, *second.history}) == list(range(1, 61))
    assert second.summary["status"] == "succeeded" and second.exit_code == 0

    # MLflow: still one run, now finished, with every step once.
    (run,) = mlflow_runs(server.settings, experiment, job.id)
    assert (run.info.status, run.data.tags["tuna.status"]) == ("FINISHED", "succeeded")
    steps = metric_steps(server.settings, run.info.run_id, "train_loss")
    assert sorted(steps) == list(range(1, 61))


@pytest.fixture
def failing_integrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """A server and worker of their own where neither integration can run: W&B is online
    without an API key (its address a closed loopback port, so nothing could leave the
    machine), and the `mlflow` package cannot be imported (a stand-in that raises first on
    the worker's path)."""
    from app.bootstrap import prepare
    from app.main import create_app

    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'mlflow\'", name="mlflow")\n'
    )
    monkeypatch.setenv("PYTHONPATH", str(blocked.parent))
    monkeypatch.setenv("TUNA_WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key either
    settings = make_settings(
        tmp_path / "data", None, training_queue=f"integrations-{uuid.uuid4().hex[:8]}"
    )
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    process = WorkerProcess(settings, tmp_path / "worker.log")
    process.start()
    try:
        yield LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    finally:
        process.stop()
        stop()


def test_integrations_that_cannot_run_never_fail_the_job(
    failing_integrations: LiveServer,
) -> None:
    live = failing_integrations
    client = live.client(live.new_key())
    job = client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=upload(client, chat_jsonl(12)),
        seed=1,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        integrations=integrations("tuna-tests", "never"),  # type: ignore[arg-type]
    )
    done = wait_for(client, job.id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert sorted(metrics_events(client, job.id)) == [1, 2, 3]
    warnings = [e.message for e in all_events(client, job.id) if e.level == "warn"]
    assert len(warnings) == 2, warnings  # one each, not one per step
    (wandb_warning,) = [w for w in warnings if "Weights & Biases" in w]
    assert "could not start" in wandb_warning and "API key" in wandb_warning
    (mlflow_warning,) = [w for w in warnings if "MLflow" in w]
    assert "not installed" in mlflow_warning
    assert not (live.settings.data_dir / "mlflow").exists()


# -- in one process: the callbacks of one attempt, on a database of their own ---------------

DPO_STEP = {"train_loss": 0.69, "train_reward_accuracy": 0.5, "train_reward_margin": 0.01}


@pytest.fixture
def job_row(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A running DPO job with both integrations, on a SQLite database of its own."""
    from app.db import Database
    from app.migrate import upgrade
    from tests.worker.test_job_callbacks import add_running_dpo_job

    url = f"sqlite:///{tmp_path / 'tuna.db'}"
    upgrade(url)
    database = Database(url)
    job_id = add_running_dpo_job(
        database,
        "proj_integrations",
        hyperparameters={"beta": "auto"},
        integrations=integrations("in-process", "in-process"),
    )
    yield database, job_id
    database.dispose()
    import wandb

    # The W&B service these in-process runs started: stopped here, not at interpreter exit
    # (where it reports a lost connection once pytest has closed its loops).
    wandb.teardown()


def events_of(database: Any, job_id: str) -> list[tuple[str, str]]:
    from app.fine_tuning.repository import FineTuningRepository

    with database.session_scope() as session:
        page = FineTuningRepository(session).list_events(job_id, after=None, limit=100)
        return [(event.level, event.message) for event in reversed(page.items)]


def test_a_call_that_fails_midway_is_one_warning_and_the_job_goes_on(
    job_row: tuple[Any, str], tmp_path: Path
) -> None:
    """MLflow refuses a metric name (W&B takes it): MLflow stops with one warn event; W&B and
    the job's own rows go on. A DPO job's metric names reach both."""
    from app.files.storage import LocalStorage
    from app.fine_tuning.repository import FineTuningRepository
    from worker.integrations import JobIntegrations
    from worker.job_callbacks import JobCallbacks, JobPlan

    database, job_id = job_row
    settings = make_settings(tmp_path / "data", None)
    model_id = "ft:tuna-tiny-test:org::abcdefgh"
    opened = JobIntegrations.open(
        settings, database, job_id, model_id=model_id, base_model="tuna-tiny-test"
    )
    assert sorted(tracker.kind for tracker in opened.trackers) == ["mlflow", "wandb"]
    storage = LocalStorage(tmp_path / "storage")
    plan = JobPlan(
        job_id=job_id,
        worker_id="w",
        attempt=1,
        base_model="tuna-tiny-test",
        model_id=model_id,
        training_type="lora",
        output_dir=storage.root / "jobs" / job_id,
        method="dpo",
    )
    callbacks = JobCallbacks(database, storage, plan, opened)
    callbacks.on_metrics(1, 3, DPO_STEP)
    callbacks.on_metrics(2, 3, DPO_STEP | {"odd name?": 1.0})  # MLflow refuses the name
    callbacks.on_metrics(3, 3, DPO_STEP)
    with database.session_scope() as session:
        jobs = FineTuningRepository(session)
        assert [m["step"] for m in jobs.metrics_events(job_id)] == [1, 2, 3]
        job = jobs.reload_job(job_id)
        assert job is not None
        job.status, job.fine_tuned_model = "succeeded", model_id
    opened.finish_as_recorded()

    warnings = [message for level, message in events_of(database, job_id) if level == "warn"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("The MLflow integration is not logging this job: it failed")
    assert "odd name?" in warnings[0]
    (run,) = mlflow_runs(settings, "in-process", job_id)
    assert sorted(metric_steps(settings, run.info.run_id, "train_reward_accuracy")) == [1]
    # Closed as failed when it stopped, saying why; the job's own status is not claimed there.
    assert run.info.status == "FAILED" and "tuna.status" not in run.data.tags
    assert "odd name?" in run.data.tags["tuna.integration_error"]
    (wandb_run,) = wandb_runs(settings, job_id)
    assert sorted(wandb_run.history) == [1, 2, 3]
    assert wandb_run.history[3]["train_reward_margin"] == pytest.approx(0.01)
    assert wandb_run.summary["status"] == "succeeded" and wandb_run.exit_code == 0


def test_a_disabled_integration_says_so_once(job_row: tuple[Any, str], tmp_path: Path) -> None:
    from worker.integrations import JobIntegrations

    database, job_id = job_row
    settings = make_settings(
        tmp_path / "data", None, wandb_mode="disabled", mlflow_tracking_uri="nowhere://x"
    )
    opened = JobIntegrations.open(
        settings, database, job_id, model_id="ft:x", base_model="tuna-tiny-test"
    )
    assert opened.trackers == []
    opened.metrics(1, 1, DPO_STEP)
    opened.finish_as_recorded()
    warnings = [message for level, message in events_of(database, job_id) if level == "warn"]
    assert len(warnings) == 2, warnings
    assert "TUNA_WANDB_MODE=disabled" in warnings[0]
    assert "MLflow" in warnings[1] and "could not start" in warnings[1]
    assert not (tmp_path / "data" / "wandb").exists()
