"""A finished job's results file: OpenAI's per-step CSV, built from its metrics events."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

FILENAME = "step_metrics.csv"
PURPOSE = "fine-tune-results"
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# Where each column's value is in a metrics event's data.
_SOURCES = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


def results_csv(metrics: Iterable[dict[str, Any]]) -> bytes:
    """One row per step, in the columns OpenAI's users parse; a missing value is empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for m in metrics:
        writer.writerow([m.get("step"), *(_fmt(m.get(key)) for key in _SOURCES[1:])])
    return buffer.getvalue().encode()


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"
