"""Config round-trips and "auto" hyperparameter resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.training.config import (
    BASE_LEARNING_RATE,
    TrainingConfig,
    auto_batch_size,
    auto_n_epochs,
    resolve_hyperparameters,
)


def config(**overrides: object) -> TrainingConfig:
    values: dict[str, object] = {
        "base_model": "tuna-tiny-test",
        "model_cache_dir": "/cache",
        "training_file": "/data/train.jsonl",
        "output_dir": "/out",
    }
    values.update(overrides)
    return TrainingConfig.from_dict(values)


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),
        (3, 25),
        (4, 25),
        (10, 10),
        (20, 5),
        (33, 3),
        (34, 3),
        (1000, 3),
        (8333, 3),
        (8334, 2),
        (12500, 2),
        (30000, 1),
    ],
)
def test_auto_epochs_follow_the_public_heuristic(n: int, epochs: int) -> None:
    assert auto_n_epochs(n) == epochs


def test_auto_batch_size_is_small_for_small_sets_and_capped() -> None:
    assert auto_batch_size(10) == 1
    assert auto_batch_size(700) == 1
    assert auto_batch_size(5000) == 10
    assert auto_batch_size(10_000_000) == 256


def test_resolve_fills_only_the_auto_values() -> None:
    auto = resolve_hyperparameters(10, 500, config())
    assert (auto.n_epochs, auto.batch_size, auto.learning_rate_multiplier) == (10, 1, 1.0)
    assert auto.learning_rate == BASE_LEARNING_RATE["lora"]

    fixed = resolve_hyperparameters(
        10,
        500,
        config(n_epochs=2, batch_size=4, learning_rate_multiplier=0.5, training_type="full"),
    )
    assert (fixed.n_epochs, fixed.batch_size, fixed.learning_rate_multiplier) == (2, 4, 0.5)
    assert fixed.learning_rate == pytest.approx(BASE_LEARNING_RATE["full"] * 0.5)

    bigger = resolve_hyperparameters(10, 500, config(batch_size=16))
    assert bigger.learning_rate_multiplier == 4.0


def test_dict_round_trip_keeps_types() -> None:
    cfg = config(validation_file="/data/valid.jsonl", local_models={"mine": "/models/mine"})
    assert isinstance(cfg.training_file, Path)
    assert cfg.local_models == {"mine": Path("/models/mine")}
    again = TrainingConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict()["validation_file"] == "/data/valid.jsonl"


@pytest.mark.parametrize(
    "bad",
    [
        {"n_epochs": 0},
        {"n_epochs": 51},
        {"batch_size": 257},
        {"learning_rate_multiplier": 0},
        {"training_type": "dpo"},
        {"device": "tpu"},
        {"compile": "yes"},
        {"precision": "fp16"},
        {"keep_checkpoints": 0},
        {"typo_key": 1},
    ],
)
def test_invalid_values_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        config(**bad)
