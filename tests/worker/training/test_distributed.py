"""One run on two processes (gloo on this CPU): the same losses as one process with the same
global batch, checkpoints that resume at either world size, and a killed rank that fails the
attempt with `rank_lost` instead of hanging.

Rank 0 runs in the test process (as in a worker); rank 1 is a child process
(`worker.training.launch.train_on`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.training.helpers import Recorder
from worker.training.config import TrainingConfig
from worker.training.launch import RANK_LOST, train_on
from worker.training.loop import TrainingError, TrainingPaused, train

pytestmark = pytest.mark.slow

# float32 sums in another order (each rank sums its share, then the shares are added).
TOLERANCE = 1e-5


def compare(one: Recorder, two: Recorder) -> None:
    assert one.losses.keys() == two.losses.keys() and one.losses
    for step, loss in one.losses.items():
        assert two.losses[step] == pytest.approx(loss, rel=TOLERANCE, abs=TOLERANCE), step
    last_one, last_two = one.metrics[-1][2], two.metrics[-1][2]
    assert last_two["trained_tokens"] == last_one["trained_tokens"]
    assert last_two["train_mean_token_accuracy"] == pytest.approx(
        last_one["train_mean_token_accuracy"], abs=1e-6
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, folder
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "training_type, overrides",
    [
        ("lora", {"lora_dropout": 0.0}),  # dropout masks differ between ranks' streams
        ("full", {"learning_rate_multiplier": 1.0}),
    ],
)
def test_two_processes_train_like_one(
    make_config: Callable[..., TrainingConfig],
    varied_file: Path,
    validation_file: Path,
    training_type: str,
    overrides: dict[str, Any],
) -> None:
    settings = {
        "training_type": training_type,
        "batch_size": 4,  # 6 examples: global batches of 4 and 2, shares of 2+2 and 1+1
        "n_epochs": 2,
        "compile": "off",
        "validation_file": validation_file,
        **overrides,
    }
    one, two = Recorder(), Recorder()
    single = train(make_config(varied_file, "one", **settings), one)
    double = train_on(2, make_config(varied_file, "two", **settings), two)
    compare(one, two)
    assert two.hyperparameters == one.hyperparameters
    assert any(e[2] and e[2].get("processes") == 2 for e in two.events)
    # Validation is measured on the whole model at the same points.
    assert two.baselines[0][2]["full_valid_loss"] == pytest.approx(
        one.baselines[0][2]["full_valid_loss"], rel=TOLERANCE
    )
    assert [step for step, _ in two.checkpoints] == [step for step, _ in one.checkpoints]
    assert_same_weights(single.final_dir, double.final_dir)
    assert not torch.distributed.is_initialized()  # the group is gone with the run


@pytest.fixture
def validation_file(tmp_path: Path) -> Path:
    from tests.worker.training.helpers import chat, write_jsonl

    rows = [chat(f"What is {i} times 2?", f"It is {2 * i}.") for i in range(3)]
    return write_jsonl(tmp_path / "valid.jsonl", rows)


def test_a_pause_on_two_processes_resumes_on_one(
    make_config: Callable[..., TrainingConfig], varied_file: Path
) -> None:
    """FSDP's shards are saved whole (weights and optimizer state by parameter name): a run
    paused on two processes continues on one exactly as if it had never stopped."""
    settings = {"training_type": "full", "batch_size": 2, "n_epochs": 2, "compile": "off"}
    straight = Recorder()
    train(make_config(varied_file, "straight", **settings), straight)

    paused = Recorder(stop_at=4, request="pause")
    config = make_config(varied_file, "paused", **settings)
    with pytest.raises(TrainingPaused) as stopped:
        train_on(2, config, paused)
    resumed = Recorder()
    config.resume_from_checkpoint = stopped.value.checkpoint_path
    train(config, resumed)
    losses = {**paused.losses, **resumed.losses}
    assert sorted(losses) == sorted(straight.losses)
    for step, loss in straight.losses.items():
        assert losses[step] == pytest.approx(loss, rel=TOLERANCE, abs=TOLERANCE), step


def test_a_killed_rank_fails_the_attempt_with_rank_lost(
    make_config: Callable[..., TrainingConfig], varied_file: Path
) -> None:
    class KillRankOne(Recorder):
        """Kills the other rank (by its pid) once training has started."""

        def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
            super().on_metrics(step, total_steps, metrics)
            if step == 2:
                children = _children_of(os.getpid())
                assert children, "rank 1 is not running"
                for pid in children:
                    os.kill(pid, signal.SIGKILL)

    config = make_config(varied_file, "killed", batch_size=2, n_epochs=6, compile="off")
    recorder = KillRankOne()
    finished = threading.Event()
    started = time.monotonic()
    with pytest.raises(TrainingError) as failed:
        try:
            train_on(2, config, recorder)
        finally:
            finished.set()
    assert failed.value.code == RANK_LOST
    assert "process 1 of 2" in str(failed.value) and "signal 9" in str(failed.value)
    assert time.monotonic() - started < 300  # detected, not waited out (the timeout is 10 min)
    assert not torch.distributed.is_initialized()
    assert _children_of(os.getpid()) == []


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def test_runs_across_machines_through_an_agent(
    make_config: Callable[..., TrainingConfig], varied_file: Path, tmp_path: Path
) -> None:
    """A second "machine" (an agent process with one rank) joins two runs in a row at the
    leading process's rendezvous, and each trains like one process."""
    import subprocess
    import sys

    from worker.training.launch import _free_port

    rendezvous = f"127.0.0.1:{_free_port()}"
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "worker.training.agent", "--rendezvous", rendezvous,
         "--nodes", "2", "--node-rank", "1", "--processes", "1", "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        settings = {"batch_size": 4, "n_epochs": 1, "compile": "off", "lora_dropout": 0.0}
        one = Recorder()
        train(make_config(varied_file, "one", **settings), one)
        for run in ("first", "second"):
            two = Recorder()
            train_on(
                1, make_config(varied_file, run, **settings), two, nodes=2, rendezvous=rendezvous
            )
            compare(one, two)
            assert any(e[2] and e[2].get("processes") == 2 for e in two.events)
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
    assert b"training" in (tmp_path / "agent.log").read_bytes()


def test_an_error_of_every_rank_is_reported_as_itself_not_as_a_lost_rank(
    make_config: Callable[..., TrainingConfig], varied_file: Path
) -> None:
    """batch_size 1 on 2 processes: each rank refuses it; the run fails with that error (the
    other rank exits as planned), not with rank_lost, so the job fails instead of retrying."""
    with pytest.raises(TrainingError) as failed:
        train_on(2, make_config(varied_file, "small", batch_size=1, compile="off"), Recorder())
    assert failed.value.code == "invalid_batch_size"
    assert failed.value.param == "batch_size"
