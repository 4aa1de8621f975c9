"""Jobs on a worker that trains each job on two processes (TUNA_TRAINING_PROCESSES=2, gloo on
this CPU): a job trains and publishes as on one; a training process SIGKILLed mid-job fails that
attempt only, and the job resumes from its checkpoint and succeeds. And on two "machines": a
worker with TUNA_TRAINING_NODES=2 and an agent process as the second machine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import LiveServer, WorkerProcess, make_settings, serve_in_thread
from tests.datasets import chat_jsonl
from tests.worker.test_crash_resume import metrics_of
from tests.worker.test_job_flow import all_events, upload, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def two_process_worker(tmp_path: Path):
    from app.bootstrap import prepare
    from app.main import create_app

    settings = make_settings(tmp_path / "data", None, training_processes=2)
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    yield live, worker
    worker.stop()
    stop()


@pytest.fixture
def two_machine_worker(tmp_path: Path):
    import subprocess
    import sys

    from app.bootstrap import prepare
    from app.main import create_app
    from tests.conftest import REPO_ROOT, free_port

    rendezvous = f"127.0.0.1:{free_port()}"
    settings = make_settings(
        tmp_path / "data", None, training_nodes=2, training_rendezvous=rendezvous
    )
    prepare(settings)
    app = create_app(settings)
    url, stop = serve_in_thread(app)
    live = LiveServer(app=app, settings=settings, url=url, backend="sqlite")
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "worker.training.agent", "--rendezvous", rendezvous,
         "--nodes", "2", "--node-rank", "1", "--device", "cpu"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    yield live, tmp_path / "agent.log"
    worker.stop()
    os.killpg(agent.pid, signal.SIGTERM)
    agent.wait(timeout=30)
    stop()


def create(client: openai.OpenAI, training_file: str, n_epochs: int) -> str:
    return client.fine_tuning.jobs.create(
        model="tuna-tiny-test",
        training_file=training_file,
        seed=7,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": n_epochs, "batch_size": 4, "lora_dropout": 0.0}
            },
        },
        extra_body={"auto_eval": False},
    ).id


def rank_processes() -> list[int]:
    """Pids of `python -m worker.training --rank ...` processes (the workers' other ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--rank" in argv and (
                b"worker.training" in argv or b"worker.training.agent" in argv
            ):
                found.append(int(entry.name))
    return found


def kill_a_rank_mid_job(client: openai.OpenAI) -> tuple[str, list[str]]:
    """A 16-step job whose other rank (this machine's or the agent's) is SIGKILLed past the
    first epoch's checkpoint; once it has succeeded, its id and events' messages."""
    job_id = create(client, upload(client, chat_jsonl(16)), n_epochs=4)
    deadline = time.monotonic() + 180
    while True:  # past the first epoch's checkpoint (4 steps an epoch)
        steps = [m["step"] for m in metrics_of(client, job_id)]
        if steps and max(steps) >= 6:
            break
        assert time.monotonic() < deadline, "the job did not get going"
        time.sleep(0.2)
    (other_rank,) = rank_processes()
    os.kill(other_rank, signal.SIGKILL)
    job = wait_for(client, job_id, {"succeeded", "failed"}, timeout=300)
    assert job.status == "succeeded", job.error
    return job_id, [e.message for e in all_events(client, job_id)]


def test_a_job_trains_on_two_processes(two_process_worker) -> None:
    live, _worker = two_process_worker
    client = live.client(live.new_key())
    job_id = create(client, upload(client, chat_jsonl(16)), n_epochs=2)
    job = wait_for(client, job_id, {"succeeded", "failed"})
    assert job.status == "succeeded", job.error
    messages = [e.message for e in all_events(client, job_id)]
    assert any("x 2 processes (DDP)" in m for m in messages), messages
    reply = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": "What is 2 plus 2?"}],
        max_tokens=4,
    )
    assert reply.choices[0].message is not None
    assert not rank_processes()  # the other rank ended with the run


def test_a_killed_training_process_fails_the_attempt_and_the_job_resumes(
    two_process_worker,
) -> None:
    live, _worker = two_process_worker
    client = live.client(live.new_key())
    job_id, messages = kill_a_rank_mid_job(client)
    assert any("Training process 1 of 2 ended (signal 9)" in m for m in messages), messages
    resumed = [m for m in messages if m.startswith("Resumed from step ")]
    assert len(resumed) == 1 and resumed[0].endswith("(attempt 2)"), messages
    assert int(resumed[0].split()[3]) % 4 == 0  # an epoch's checkpoint
    steps = [m["step"] for m in metrics_of(client, job_id)]
    assert sorted(set(steps)) == list(range(1, 17))


def test_a_job_trains_across_two_machines(two_machine_worker) -> None:
    live, agent_log = two_machine_worker
    client = live.client(live.new_key())
    for _ in range(2):  # the agent serves one run after another
        job_id = create(client, upload(client, chat_jsonl(12)), n_epochs=1)
        job = wait_for(client, job_id, {"succeeded", "failed"})
        assert job.status == "succeeded", job.error
        messages = [e.message for e in all_events(client, job_id)]
        assert any("x 2 processes (DDP)" in m for m in messages), messages
    assert agent_log.read_bytes().count(b"training") >= 2


def test_a_lost_machine_fails_the_attempt_and_the_job_resumes(two_machine_worker) -> None:
    """The agent's rank is killed mid-job: the leading worker's next collective fails, the job
    goes back to the queue, the agent starts its rank again and the next attempt resumes."""
    live, _agent_log = two_machine_worker
    client = live.client(live.new_key())
    _job_id, messages = kill_a_rank_mid_job(client)
    assert any("on another machine ended or became unreachable" in m for m in messages), messages
    assert any(m.startswith("Resumed from step ") for m in messages), messages
