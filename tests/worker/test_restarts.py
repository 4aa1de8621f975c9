"""Broker and API restarts lose no job: the database is the source of truth.

Each test owns its whole stack (a private Postgres database, its own queue, and for the Redis
test its own `redis-server`), so it can kill any part of it without touching other tests:

* Redis restarted without persistence mid-job: the running job finishes, and the jobs that were
  waiting in Redis (and vanished with it) are sent again by the worker's reconciler;
* the API process SIGKILLed mid-job and started again: every job and file is still there, the
  running job finishes, the waiting one runs;
* the API unable to reach the broker when a job is created (what a crash between commit and
  send looks like from the job's side): the create still answers 200, and the reconciler sends
  the job once the grace period is over.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from app.bootstrap import create_key, prepare
from app.config import Settings
from tests.conftest import IN_CI, ApiProcess, WorkerProcess, free_port, make_settings
from tests.datasets import chat_jsonl
from tests.worker.test_job_flow import TERMINAL, all_events, upload, wait_for

pytestmark = pytest.mark.slow

LONG = {"n_epochs": 3, "batch_size": 2}  # 36 steps on 24 examples: long enough to interrupt
SHORT = {"n_epochs": 1, "batch_size": 4}


class RedisServer:
    """A `redis-server` of this test's own, without persistence: a restart empties it."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is required in CI")
            pytest.skip("redis-server is not installed")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def run_id(self) -> str:
        """Redis's id of the running server process: a new one after every start."""
        client = redis.Redis.from_url(self.url)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()

    def message_count(self, queue: str) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            return int(client.llen(queue))
        finally:
            client.close()


@pytest.fixture
def stack(tmp_path: Path, private_postgres_url: str) -> Iterator[dict]:
    """Parts started by the test, all stopped at the end whatever happened."""
    parts: dict = {"workers": [], "apis": [], "redis": []}
    yield parts
    for worker in parts["workers"]:
        worker.stop()
    for api in parts["apis"]:
        api.kill(signal.SIGTERM)
    for server in parts["redis"]:
        server.kill()


def start_stack(
    stack: dict, tmp_path: Path, database_url: str, broker_url: str | None, **api_env: str
) -> tuple[Settings, ApiProcess, openai.OpenAI]:
    settings = make_settings(
        tmp_path / "data",
        database_url,
        broker_url,
        job_lease_seconds=4.0,
        training_queue=f"restart-test-{uuid.uuid4().hex[:8]}",
    )
    prepare(settings)
    api = ApiProcess(settings, tmp_path / "api.log", **api_env)
    api.start()
    stack["apis"].append(api)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    stack["workers"].append(worker)
    key = create_key(settings, f"restart-{uuid.uuid4().hex[:8]}")
    client = openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=2, timeout=60)
    return settings, api, client


def create(client: openai.OpenAI, training_file: str, hyperparameters: dict) -> str:
    return client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=training_file,
        seed=3,
        hyperparameters=hyperparameters,
    ).id


def wait_until_training(client: openai.OpenAI, job_id: str, step: int = 3) -> None:
    deadline = time.monotonic() + 120
    while True:
        steps = [e.data["step"] for e in all_events(client, job_id) if e.type == "metrics"]
        if steps and max(steps) >= step:
            return
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def test_redis_restart_mid_job_loses_no_job(
    stack: dict, tmp_path: Path, private_postgres_url: str
) -> None:
    broker = RedisServer(tmp_path)
    broker.start()
    stack["redis"].append(broker)
    settings, _, client = start_stack(stack, tmp_path, private_postgres_url, broker.url)
    training_file = upload(client, chat_jsonl(24))

    running = create(client, training_file, LONG)
    wait_until_training(client, running)
    waiting = [create(client, training_file, SHORT) for _ in range(2)]
    deadline = time.monotonic() + 30
    while broker.message_count(settings.training_queue) < 2:  # they sit behind the running job
        assert time.monotonic() < deadline, "the waiting jobs never reached Redis"
        time.sleep(0.1)

    before = broker.run_id()
    broker.kill()
    broker.start()  # empty (no persistence): both waiting messages are gone
    # A new server, started empty. Its queue is not checked here: the worker's reconciler may
    # already have noticed the loss and sent both jobs again, which is what this test wants.
    assert broker.run_id() != before

    for job_id in [running, *waiting]:
        done = wait_for(client, job_id, TERMINAL, timeout=240)
        assert done.status == "succeeded", (job_id, done.error)
    messages = [e.message for e in all_events(client, running)]
    assert "Worker lost; job returned to the queue" not in messages  # it never stopped
    log = (tmp_path / "worker.log").read_text()
    assert "the broker lost its messages" in log


def test_api_killed_mid_job_loses_nothing(
    stack: dict, tmp_path: Path, private_postgres_url: str, redis_url: str
) -> None:
    _, api, client = start_stack(stack, tmp_path, private_postgres_url, redis_url)
    training_file = upload(client, chat_jsonl(24))
    running = create(client, training_file, LONG)
    wait_until_training(client, running)
    waiting = create(client, training_file, SHORT)

    api.kill()  # SIGKILL: no shutdown handler runs
    with pytest.raises(openai.APIConnectionError):
        client.with_options(max_retries=0).fine_tuning.jobs.retrieve(running)
    time.sleep(2)  # the worker trains on while no API is up
    api.start()

    assert {job.id for job in client.fine_tuning.jobs.list()} == {running, waiting}
    uploads = [f.id for f in client.files.list() if f.purpose == "fine-tune"]
    assert uploads == [training_file]
    for job_id in (running, waiting):
        done = wait_for(client, job_id, TERMINAL, timeout=240)
        assert done.status == "succeeded", (job_id, done.error)
    steps = [e.data["step"] for e in all_events(client, running) if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 37))
    assert client.models.retrieve(client.fine_tuning.jobs.retrieve(running).fine_tuned_model)


def test_job_created_while_the_broker_is_unreachable_still_runs(
    stack: dict, tmp_path: Path, private_postgres_url: str, redis_url: str
) -> None:
    # The API's broker is a closed port; the worker's is the real Redis.
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    _, _, client = start_stack(
        stack, tmp_path, private_postgres_url, redis_url, TUNA_BROKER_URL=dead_broker
    )
    training_file = upload(client, chat_jsonl(24))

    job_id = create(client, training_file, SHORT)  # 200 although no message was sent

    assert client.fine_tuning.jobs.retrieve(job_id).status == "validating_files"
    done = wait_for(client, job_id, TERMINAL, timeout=120)
    assert done.status == "succeeded", done.error
    assert f"could not enqueue {job_id}" in (tmp_path / "api.log").read_text()
