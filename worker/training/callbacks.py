"""How a training run reports progress and learns it should stop.

The engine knows nothing about jobs, events tables or queues: the worker implements these
callbacks to write events, metrics and checkpoints to the DB, and to answer ``should_stop`` from
the job's status.  ``should_stop`` is polled between optimizer steps, so a cancel or pause takes
effect within one step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable

from worker.training.config import ResolvedHyperparameters

StopRequest = Literal["cancel", "pause"]


@runtime_checkable
class TrainingCallbacks(Protocol):
    """What ``train()`` calls.  Exceptions raised here abort the run (they are not swallowed).

    ``on_metrics`` gets ``train_loss``, ``train_mean_token_accuracy``, ``learning_rate``,
    ``epoch``, ``trained_tokens`` (cumulative) and ``tokens_per_second`` every step;
    ``valid_loss``/``valid_mean_token_accuracy`` on evaluation steps when there is a validation
    file; ``full_valid_loss``/``full_valid_mean_token_accuracy`` on the last step.  (DPO names
    its own metrics, `tuna_core.metrics`: ``train_loss``, ``train_reward_accuracy``, ...)

    With a validation file, a run that starts fresh (not resumed from a checkpoint) measures the
    starting model on the whole file before its first step and reports it through ``on_event``
    ("info", "Validation loss before training: 2.3456", data ``{"baseline": {"full_valid_loss":
    2.3456, "full_valid_mean_token_accuracy": 0.41}}``; DPO: its ``full_valid_*`` metrics).
    ``on_checkpoint``'s metrics are that step's, plus ``full_valid_loss``/
    ``full_valid_mean_token_accuracy`` over the whole validation file when there is one.
    """

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None: ...

    def on_hyperparameters(self, resolved: ResolvedHyperparameters) -> None: ...

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None: ...

    def on_checkpoint_deleted(self, step: int, path: Path) -> None: ...

    def should_stop(self) -> StopRequest | None: ...


class NullCallbacks:
    """Every callback a no-op; subclass and override only what you need."""

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        pass

    def on_hyperparameters(self, resolved: ResolvedHyperparameters) -> None:
        pass

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        pass

    def on_checkpoint_deleted(self, step: int, path: Path) -> None:
        pass

    def should_stop(self) -> StopRequest | None:
        return None


class PrintCallbacks(NullCallbacks):
    """One JSON object per line on ``stream`` (stdout): what ``python -m worker.training`` shows.

    Lines look like ``{"type": "metrics", "created_at": 1700000000, "step": 3, ...}``; ``type`` is
    one of ``event``, ``hyperparameters``, ``metrics``, ``checkpoint``, ``checkpoint_deleted``.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def _emit(self, kind: str, **payload: Any) -> None:
        line = {"type": kind, "created_at": int(time.time()), **payload}
        self.stream.write(json.dumps(line, default=str) + "\n")
        self.stream.flush()

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._emit("event", level=level, message=message, data=data)

    def on_hyperparameters(self, resolved: ResolvedHyperparameters) -> None:
        self._emit("hyperparameters", **resolved.to_dict())

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self._emit("metrics", step=step, total_steps=total_steps, **metrics)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self._emit("checkpoint", step=step, path=str(path), metrics=metrics)

    def on_checkpoint_deleted(self, step: int, path: Path) -> None:
        self._emit("checkpoint_deleted", step=step, path=str(path))
