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
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuna_core.devices import pick_device
from worker.training.callbacks import TrainingCallbacks
from worker.training.config import TrainingConfig
from worker.training.distributed import destroy_process_group, init_process_group

logger = logging.getLogger("tuna.training")

RANK_LOST = "rank_lost"
# Exit statuses of `python -m worker.training` that end a run as planned.
_PLANNED_EXITS = {0, 3, 4}  # done, paused, cancelled


def train_on(
    processes: int,
    config: TrainingConfig,
    callbacks: TrainingCallbacks,
    tokenized: Mapping[Path, list[Any]] | None = None,
) -> Any:
    """``train(config, callbacks, tokenized)`` on ``processes`` processes (1: this one only)."""
    from worker.training.loop import TrainingError, TrainingStopped, train

    if processes <= 1:
        return train(config, callbacks, tokenized)
    device = pick_device(config.device)
    address = f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory(prefix="tuna-ranks-") as folder:
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps(config.to_dict()))
        children = [
            _start_rank(rank, processes, address, config_path) for rank in range(1, processes)
        ]
        try:
            init_process_group(0, processes, address, device)
            try:
                result = train(config, callbacks, tokenized)
            except TrainingStopped:
                _wait(children)
                raise
            except Exception as exc:
                lost = _lost(children, wait_seconds=5)
                if lost:
                    raise TrainingError(lost, code=RANK_LOST) from exc
                raise
            _wait(children)
            lost = _lost(children, wait_seconds=0)
            if lost:
                raise TrainingError(lost, code=RANK_LOST)
            return result
        finally:
            destroy_process_group()
            _kill(children)


def _start_rank(
    rank: int, world_size: int, address: str, config_path: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "worker.training", "--config", str(config_path),
        "--rank", str(rank), "--world-size", str(world_size), "--init-method", address,
    ]  # fmt: skip
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
