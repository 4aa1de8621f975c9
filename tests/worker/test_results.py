"""A job's results file: OpenAI's columns (a DPO job's: its metrics), one row per step, empty
where nothing was measured."""

from __future__ import annotations

import csv
import io

from tuna_core.metrics import metric_names
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


def test_dpo_jobs_get_step_and_the_dpo_metrics() -> None:
    metrics = [
        {
            "step": 1,
            "train_loss": 0.693147,
            "train_reward_accuracy": 0.5,
            "train_reward_margin": 0.0,
            "train_chosen_reward": 0.0,
            "train_rejected_reward": 0.0,
        },
        {
            "step": 2,
            "train_loss": 0.5,
            "train_reward_accuracy": 1.0,
            "train_reward_margin": 0.25,
            "train_chosen_reward": 0.125,
            "train_rejected_reward": -0.125,
            "valid_loss": 0.6,
            "valid_reward_accuracy": 0.75,
            "valid_reward_margin": 0.1,
            "valid_chosen_reward": 0.05,
            "valid_rejected_reward": -0.05,
        },
    ]
    rows = list(csv.reader(io.StringIO(results_csv(metrics, "dpo").decode())))
    header = ["step", *metric_names("dpo", "train"), *metric_names("dpo", "valid")]
    assert rows[0] == header
    assert header[:3] == ["step", "train_loss", "train_reward_accuracy"]
    assert rows[1] == ["1", "0.693147", "0.500000", "0.000000", "0.000000", "0.000000"] + [""] * 5
    assert rows[2][1:3] == ["0.500000", "1.000000"]
    assert rows[2][6:] == ["0.600000", "0.750000", "0.100000", "0.050000", "-0.050000"]
    # Supervised jobs keep OpenAI's columns exactly.
    assert results_csv([], "supervised").decode().splitlines() == [",".join(COLUMNS)]
