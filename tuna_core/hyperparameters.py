"""The hyperparameters a job may set: names, ranges, defaults, and the check of one value.

The API checks a request with `check_value` (and names the exact parameter the caller sent), the
engine re-checks its `TrainingConfig` with the same function (it can be run alone from a JSON
file), and the worker turns a job's stored hyperparameters into engine arguments with
`engine_arguments`: one definition of each range, so the two sides cannot disagree.

OpenAI's three (`n_epochs`, `batch_size`, `learning_rate_multiplier`) may be "auto", chosen from
the data by the engine, and so may a method's own (DPO's `beta`); Tuna's extensions
(`training_type`, `lora_*`, `quantization`) have defaults instead.  `check_combination` checks
what no single value can (QLoRA's 4-bit base needs LoRA).  Which keys a job may set depends on its
method: `keys_for(method)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

AUTO = "auto"

N_EPOCHS_RANGE = (1, 50)
BATCH_SIZE_RANGE = (1, 256)
LORA_RANK_RANGE = (1, 256)
LORA_ALPHA_RANGE = (1, 4096)
# DPO's beta: how far the policy may move from the reference, in (0, 2] as OpenAI accepts.
BETA_RANGE = (0.0, 2.0)
# What "auto" resolves beta to: the DPO paper's and TRL's default, and OpenAI's documented one.
DEFAULT_BETA = 0.1

TrainingType = Literal["lora", "full"]
TRAINING_TYPES: tuple[str, ...] = get_args(TrainingType)
# How the frozen base weights are held while a LoRA adapter trains: "4bit" is QLoRA (NF4 with
# bitsandbytes, CUDA only); the result is a normal LoRA adapter.
Quantization = Literal["none", "4bit"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
# Matmul precision over float32 master weights; "auto": bf16 where the hardware multiplies bf16
# natively, float32 elsewhere.
Precision = Literal["auto", "float32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# OpenAI's three; "auto" is allowed for each.
STANDARD_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
# Tuna's extensions; no "auto". LoRA rank 8 / alpha 16 (scale 2) with no dropout: small enough
# to train fast on a CPU, and dropout 0 keeps runs exactly reproducible.
EXTENSION_DEFAULTS: dict[str, Any] = {
    "training_type": "lora",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "quantization": "none",
}
KNOWN_KEYS = (*STANDARD_KEYS, *EXTENSION_DEFAULTS)
DEFAULTS: dict[str, Any] = {key: AUTO for key in STANDARD_KEYS} | EXTENSION_DEFAULTS

# Training methods and the hyperparameters only they take ("auto" allowed for each).
METHODS = ("supervised", "dpo")
Method = Literal["supervised", "dpo"]
METHOD_KEYS: dict[str, tuple[str, ...]] = {"supervised": (), "dpo": ("beta",)}
ALL_KEYS = (*KNOWN_KEYS, *(key for keys in METHOD_KEYS.values() for key in keys))


def keys_for(method: str) -> tuple[str, ...]:
    """Every hyperparameter a job of ``method`` may set: OpenAI's, the method's, Tuna's."""
    return (*STANDARD_KEYS, *METHOD_KEYS[method], *EXTENSION_DEFAULTS)


def defaults_for(method: str) -> dict[str, Any]:
    """The stored form of a job of ``method`` that set nothing: every key, "auto" or default."""
    return DEFAULTS | dict.fromkeys(METHOD_KEYS[method], AUTO)


class InvalidHyperparameter(ValueError):
    """``reason`` says what ``key`` must be ("expected an integer between 1 and 50, got 0.")."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_in(key: str, value: Any, bounds: tuple[int, int], *, auto: bool) -> int | str:
    if auto and value == AUTO:
        return AUTO
    low, high = bounds
    if not _is_int(value) or not low <= value <= high:
        what = f"an integer between {low} and {high}" + (' or "auto"' if auto else "")
        raise InvalidHyperparameter(key, f"expected {what}, got {value!r}.")
    return int(value)


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        names = ", ".join(repr(c) for c in choices)
        raise InvalidHyperparameter(key, f"expected one of {names}, got {value!r}.")
    return str(value)


def check_value(key: str, value: Any, *, auto: bool = True) -> Any:
    """``value`` normalized (ints as int, floats as float), or InvalidHyperparameter.

    ``auto=False`` refuses "auto" for OpenAI's three: the engine's own config, where "auto" is
    spelled None.  An unknown ``key`` is an error too.
    """
    if key == "n_epochs":
        return _int_in(key, value, N_EPOCHS_RANGE, auto=auto)
    if key == "batch_size":
        return _int_in(key, value, BATCH_SIZE_RANGE, auto=auto)
    if key == "learning_rate_multiplier":
        if auto and value == AUTO:
            return AUTO
        if not _is_number(value) or value <= 0:
            also = ' or "auto"' if auto else ""
            raise InvalidHyperparameter(
                key, f"expected a number greater than 0{also}, got {value!r}."
            )
        return float(value)
    if key == "beta":
        if auto and value == AUTO:
            return AUTO
        low, high = BETA_RANGE
        if not _is_number(value) or not low < value <= high:
            also = ' or "auto"' if auto else ""
            raise InvalidHyperparameter(
                key,
                f"expected a number greater than {low:g} and at most {high:g}{also}, "
                f"got {value!r}.",
            )
        return float(value)
    if key == "training_type":
        return _one_of(key, value, TRAINING_TYPES)
    if key == "lora_rank":
        return _int_in(key, value, LORA_RANK_RANGE, auto=False)
    if key == "lora_alpha":
        # An integer >= 1 rather than any number > 0: peft's scale is alpha / rank, and an API
        # request the engine would refuse must fail at the API, not later in the worker.
        return _int_in(key, value, LORA_ALPHA_RANGE, auto=False)
    if key == "quantization":
        return _one_of(key, value, QUANTIZATIONS)
    if key == "lora_dropout":
        if not _is_number(value) or not 0 <= value < 1:
            raise InvalidHyperparameter(key, f"expected a number in [0, 1), got {value!r}.")
        return float(value)
    raise InvalidHyperparameter(key, f"unknown hyperparameter; supported: {', '.join(ALL_KEYS)}.")


def check_combination(values: Mapping[str, Any]) -> None:
    """What no single value can tell: InvalidHyperparameter naming the key to change."""
    quantization = values.get("quantization", EXTENSION_DEFAULTS["quantization"])
    training_type = values.get("training_type", EXTENSION_DEFAULTS["training_type"])
    if quantization != "none" and training_type != "lora":
        raise InvalidHyperparameter(
            "quantization",
            f"{quantization!r} (QLoRA) trains a LoRA adapter over a quantized base model; it "
            f"needs training_type 'lora', not {training_type!r}.",
        )


def check_precision(value: Any) -> Precision:
    return _one_of("precision", value, PRECISIONS)  # type: ignore[return-value]


def engine_arguments(stored: Mapping[str, Any], method: str = "supervised") -> dict[str, Any]:
    """A job's stored hyperparameters as `TrainingConfig` keyword arguments: "auto" is None."""
    values = defaults_for(method) | dict(stored)
    arguments = {key: (None if values[key] == AUTO else values[key]) for key in keys_for(method)}
    return {"method": method, **arguments}
