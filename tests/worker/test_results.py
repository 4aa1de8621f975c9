"""A job's results file: OpenAI's columns, one row per step, empty where nothing was measured."""

from __future__ import annotations

import csv
import io

from worker.results import COLUMNS, results_csv


def test_one_row_per_step_in_openai_columns() -> None:
    metrics = [
        {"step": 1, "total_steps": 2, "train_loss": 2.5, "train_mean_token_accuracy": 0.25},
        {
            "step": 2,
            "train_loss": 1.0,
            "train_mean_token_accuracy": 0.5,
            "valid_loss": 1.25,
            "valid_mean_token_accuracy": 0.375,
            "learning_rate": 1e-4,  # the engine's extras are not OpenAI's columns
        },
    ]
    rows = list(csv.reader(io.StringIO(results_csv(metrics).decode())))
    assert rows == [
        list(COLUMNS),
        ["1", "2.500000", "0.250000", "", ""],
        ["2", "1.000000", "0.500000", "1.250000", "0.375000"],
    ]
    assert results_csv([]).decode().splitlines() == [",".join(COLUMNS)]
