"""One definition of each hyperparameter's range, for the API and the engine alike."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tuna_core import hyperparameters as hp


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("n_epochs", [1, 50, "auto"], [0, 51, 2.0, True, "3"]),
        ("batch_size", [1, 256, "auto"], [0, 257, None]),
        ("learning_rate_multiplier", [0.1, 5, "auto"], [0, -1, math.inf, math.nan, True]),
        ("training_type", ["lora", "full"], ["qlora", None]),
        ("lora_rank", [1, 256], [0, 257, "auto"]),
        ("lora_alpha", [1, 4096], [0, 0.5, 4097]),
        ("lora_dropout", [0, 0.5], [1, -0.1, "0.1"]),
    ],
)
def test_each_range(key: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        assert hp.check_value(key, value) == value
    for value in bad:
        with pytest.raises(hp.InvalidHyperparameter) as caught:
            hp.check_value(key, value)
        assert caught.value.key == key and caught.value.reason.startswith("expected")


def test_the_engine_spells_auto_as_none() -> None:
    with pytest.raises(hp.InvalidHyperparameter):
        hp.check_value("n_epochs", "auto", auto=False)
    stored = {**hp.DEFAULTS, "n_epochs": 3, "lora_rank": 16}
    arguments = hp.engine_arguments(stored)
    assert arguments == {
        "method": "supervised",
        "batch_size": None,
        "learning_rate_multiplier": None,
        "n_epochs": 3,
        "training_type": "lora",
        "lora_rank": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "quantization": "none",
    }
    dpo = hp.engine_arguments(hp.defaults_for("dpo") | {"beta": 0.5}, "dpo")
    assert (dpo["method"], dpo["beta"], dpo["n_epochs"]) == ("dpo", 0.5, None)


def test_unknown_keys_and_precisions_are_refused() -> None:
    with pytest.raises(hp.InvalidHyperparameter, match="unknown hyperparameter"):
        hp.check_value("gamma", 0.1)
    assert hp.check_value("beta", "auto") == "auto" and hp.check_value("beta", 2) == 2.0
    for bad in (0, -0.1, 2.5, "0.1", True):
        with pytest.raises(hp.InvalidHyperparameter, match="greater than 0 and at most 2"):
            hp.check_value("beta", bad)
    assert [hp.check_precision(p) for p in hp.PRECISIONS] == ["auto", "float32", "bf16"]
    with pytest.raises(hp.InvalidHyperparameter, match="precision"):
        hp.check_precision("fp8")
