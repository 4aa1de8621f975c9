"""Test helpers: JSONL writing, chat examples, and callbacks that record and can stop a run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from worker.training.callbacks import NullCallbacks, StopRequest
from worker.training.config import ResolvedHyperparameters

# Message texts that trip tokenizers and templates: whitespace only, Unicode, markers and
# template syntax inside the text, code, Windows newlines.
EDGE_CASE_TEXTS = [
    "Paris.",
    "",
    " ",
    "\n\n",
    "  leading and trailing spaces  ",
    "\nstarts with a newline",
    "Unicode: café, naïve, Straße, 東京, مرحبا, Ελληνικά, emoji 🦙🚀👩‍👩‍👧, e\u0301",
    "🦙",
    "tabs\tand\r\nwindows newlines",
    "code:\n```python\ndef f(x):\n    return x * 2\n```\n",
    "looks like a marker: <|im_end|> and <|im_start|>assistant\n in the text",
    "{{ not a template }} {% neither %}",
    "numbers 1234567890 3.14159 -42",
    "a  b   c    d",
]


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat(user: str, assistant: str, **assistant_extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant, **assistant_extra},
        ]
    }


class Recorder(NullCallbacks):
    def __init__(self, stop_at: int | None = None, request: StopRequest = "cancel") -> None:
        self.stop_at, self.request = stop_at, request
        self.events: list[tuple[str, str, dict[str, Any] | None]] = []
        self.metrics_before_event: list[int] = []  # per event: how many steps were reported
        self.hyperparameters: ResolvedHyperparameters | None = None
        self.metrics: list[tuple[int, int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, Path]] = []
        self.checkpoint_metrics: dict[int, dict[str, float]] = {}
        self.deleted: list[tuple[int, Path]] = []
        self.polls = 0

    def on_event(self, level: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((level, message, data))
        self.metrics_before_event.append(len(self.metrics))

    def on_hyperparameters(self, resolved: ResolvedHyperparameters) -> None:
        self.hyperparameters = resolved

    def on_metrics(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, total_steps, dict(metrics)))

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        self.checkpoints.append((step, path))
        self.checkpoint_metrics[step] = dict(metrics)

    def on_checkpoint_deleted(self, step: int, path: Path) -> None:
        self.deleted.append((step, path))

    def should_stop(self) -> StopRequest | None:
        self.polls += 1
        done = self.metrics[-1][0] if self.metrics else 0
        if self.stop_at is not None and done >= self.stop_at:
            return self.request
        return None

    @property
    def losses(self) -> dict[int, float]:
        return {step: m["train_loss"] for step, _, m in self.metrics}

    @property
    def baselines(self) -> list[tuple[int, str, dict[str, float]]]:
        """The "before training" validation events: (steps reported before it, message, data)."""
        return [
            (before, message, data["baseline"])
            for (_, message, data), before in zip(
                self.events, self.metrics_before_event, strict=True
            )
            if data and "baseline" in data
        ]
