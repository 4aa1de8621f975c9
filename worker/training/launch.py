"""Start one run on ``processes`` processes of this machine: rank 0 here, the others as children.

Rank 0 runs in the calling process with the caller's callbacks, so the worker that holds the
job's lease reports, checkpoints and answers stop requests exactly as for a one-process run; the
other ranks are ``python -m worker.training --rank R ...`` processes that train their share of
each batch and report nothing. They meet over TCP on the loopback (``torch.distributed``'s
``tcp://`` rendezvous; torchrun's for several machines, see docs/scaling.md).

A rank that dies (killed, out of memory) makes the next collective of the others fail; rank 0
then raises ``TrainingError`` with code ``rank_lost``: the worker returns the job to the queue
and the next attempt resumes from its last checkpoint. Children never outlive the run: they are
killed when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuna_core.devices import pick_device
from worker.training.callbacks import TrainingCallbacks
from worker.training.config import TrainingConfig
from worker.training.distributed import close_run, destroy_process_group, init_process_group

logger = logging.getLogger("tuna.training")

RANK_LOST = "rank_lost"
# Exit statuses of `python -m worker.training` that end a run as planned.
_PLANNED_EXITS = {0, 3, 4}  # done, paused, cancelled


def train_on(
    processes: int,
    config: TrainingConfig,
    callbacks: TrainingCallbacks,
    tokenized: Mapping[Path, list[Any]] | None = None,
    *,
    nodes: int = 1,
    rendezvous: str | None = None,
) -> Any:
    """``train(config, callbacks, tokenized)`` on ``processes`` processes (1: this one only).

    With ``nodes`` > 1, ``processes`` per node: this machine starts its own, and the agents of
    the other machines (`worker.training.agent`) join at ``rendezvous`` (``host:port`` of this
    machine, reachable from them) as ranks ``processes`` and up; every rank gets the run's
    config from rank 0."""
    from worker.training.loop import TrainingError, TrainingStopped, train

    world_size = processes * nodes
    if world_size <= 1:
        return train(config, callbacks, tokenized)
    device = pick_device(config.device)
    address = f"tcp://{rendezvous}" if nodes > 1 else f"tcp://127.0.0.1:{_free_port()}"
    # Across machines the agents join run after run at one address: each run gets its own id.
    run_id = uuid.uuid4().hex if nodes > 1 else None
    children = [
        _start_rank(rank, world_size, address, config.device, run_id)
        for rank in range(1, processes)
    ]
    try:
        init_process_group(0, world_size, address, device, run_id)
        share_config(config)
        try:
            result = train(config, callbacks, tokenized)
        except TrainingStopped:
            _wait(children)
            raise
        except Exception as exc:
            lost = _lost(children, wait_seconds=5)
            if lost is None and world_size > processes and _is_collective_failure(exc):
                lost = (
                    "A training process on another machine ended or became unreachable "
                    f"({type(exc).__name__}); the job resumes from its last checkpoint."
                )
            if lost:
                raise TrainingError(lost, code=RANK_LOST) from exc
            raise
        _wait(children)
        lost = _lost(children, wait_seconds=0)
        if lost:
            raise TrainingError(lost, code=RANK_LOST)
        return result
    finally:
        if run_id is not None:
            close_run(address)
        destroy_process_group()
        _kill(children)


def share_config(config: TrainingConfig) -> None:
    """Rank 0: send the run's config to every rank (the agents of other machines have none)."""
    from worker.training.distributed import Parallel

    Parallel().decide(config.to_dict())


def receive_config() -> TrainingConfig:
    """Any other rank: the run's config, from rank 0 (`share_config`)."""
    from worker.training.distributed import Parallel

    shared: dict[str, Any] | None = Parallel().decide(None)
    assert shared is not None, "rank 0 sends the config first"
    return TrainingConfig.from_dict(shared)


def _is_collective_failure(exc: BaseException) -> bool:
    """An error of torch.distributed itself: a peer that vanished mid-collective."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("Gloo", "gloo", "NCCL", "Connection", "connection")
    )


def join_run(
    rank: int, world_size: int, address: str, device: str, run_id: str | None = None
) -> None:
    """One rank other than 0 of one run: join its group, take the config from rank 0, train
    this rank's share of each batch, leave. Reports nothing: rank 0 reports the run, its
    errors included (a training error is every rank's), so only a crash ends this process
    abnormally, which rank 0 reports as `rank_lost`."""
    from worker.training.callbacks import NullCallbacks
    from worker.training.loop import TrainingError, TrainingStopped, train

    init_process_group(rank, world_size, address, pick_device(device), run_id)
    try:
        config = receive_config()
        logger.info("rank %d: training %s", rank, config.output_dir)
        train(config, NullCallbacks())
    except (TrainingStopped, TrainingError):
        pass  # paused, cancelled or failed with rank 0, which says so
    finally:
        destroy_process_group()


def _start_rank(
    rank: int, world_size: int, address: str, device: str, run_id: str | None
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "worker.training", "--device", device,
        "--rank", str(rank), "--world-size", str(world_size), "--init-method", address,
    ]  # fmt: skip
    if run_id is not None:
        command += ["--run-id", run_id]
    # Its own process group: killing it (or its end) never signals the worker.
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)


def _wait(children: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.1, deadline - time.monotonic()))


def _lost(children: list[subprocess.Popen[bytes]], wait_seconds: float) -> str | None:
    """Which rank ended abnormally, in words; None if none did."""
    deadline = time.monotonic() + wait_seconds
    while True:
        for rank, child in enumerate(children, start=1):
            code = child.poll()
            if code is not None and code not in _PLANNED_EXITS:
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                return (
                    f"Training process {rank} of {len(children) + 1} ended ({how}); the job "
                    "resumes from its last checkpoint."
                )
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _kill(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
