"""A finished job's results file: a per-step CSV, built from its metrics events.

Supervised jobs get OpenAI's columns exactly, which its users parse. OpenAI documents no results
columns for DPO; a DPO job gets ``step`` and the method's metric names
(`tuna_core.metrics`) on the training and the validation batch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from tuna_core.metrics import metric_names

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


def columns(method: str = "supervised") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the CSV's header, the metrics event key of each column) for a job of ``method``."""
    if method == "supervised":
        return COLUMNS, _SOURCES
    names = ("step", *metric_names(method, "train"), *metric_names(method, "valid"))
    return names, names


def results_csv(metrics: Iterable[dict[str, Any]], method: str = "supervised") -> bytes:
    """One row per step; a value not measured (no validation batch that step) is empty."""
    header, sources = columns(method)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for m in metrics:
        writer.writerow([m.get("step"), *(_fmt(m.get(key)) for key in sources[1:])])
    return buffer.getvalue().encode()


def _fmt(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"
