"""Supervised hyperparameters: parsing the request, the stored form, and what the job shows.

Checked by hand rather than by pydantic so that every error names the exact parameter the caller
sent (`hyperparameters.n_epochs` or `method.supervised.hyperparameters.n_epochs`): pydantic's
locations for `"auto" | int` unions carry the union branch, which is no use to a client.

The stored form (the job's `hyperparameters` column) is complete: every key present, "auto" kept
as the string "auto", the extensions filled with their defaults. The worker turns it into engine
arguments with `engine_arguments`; the API shows "auto" until `resolved_hyperparameters` exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from app.errors import InvalidRequest

AUTO = "auto"

N_EPOCHS_RANGE = (1, 50)
BATCH_SIZE_RANGE = (1, 256)
LORA_RANK_RANGE = (1, 256)
LORA_ALPHA_RANGE = (1, 4096)
TRAINING_TYPES = ("lora", "full")

# OpenAI's three; "auto" is allowed for each.
STANDARD_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")
# Tuna's extensions; no "auto", defaults below.
EXTENSION_DEFAULTS: dict[str, Any] = {
    "training_type": "lora",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
}
KNOWN_KEYS = (*STANDARD_KEYS, *EXTENSION_DEFAULTS)

DEFAULTS: dict[str, Any] = {key: AUTO for key in STANDARD_KEYS} | EXTENSION_DEFAULTS

TrainingType = Literal["lora", "full"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param)


def _int_in(value: Any, param: str, bounds: tuple[int, int], *, auto: bool) -> int | str:
    if auto and value == AUTO:
        return AUTO
    low, high = bounds
    if not _is_int(value) or not low <= value <= high:
        what = f"an integer between {low} and {high}" + (' or "auto"' if auto else "")
        raise _bad(param, f"expected {what}, got {value!r}.")
    return int(value)


def _learning_rate_multiplier(value: Any, param: str) -> float | str:
    if value == AUTO:
        return AUTO
    if not _is_number(value) or value <= 0:
        raise _bad(param, f'expected a number greater than 0 or "auto", got {value!r}.')
    return float(value)


def _check_one(key: str, value: Any, param: str) -> Any:
    if key == "n_epochs":
        return _int_in(value, param, N_EPOCHS_RANGE, auto=True)
    if key == "batch_size":
        return _int_in(value, param, BATCH_SIZE_RANGE, auto=True)
    if key == "learning_rate_multiplier":
        return _learning_rate_multiplier(value, param)
    if key == "training_type":
        if value not in TRAINING_TYPES:
            raise _bad(param, f"expected one of 'lora', 'full', got {value!r}.")
        return value
    if key == "lora_rank":
        return _int_in(value, param, LORA_RANK_RANGE, auto=False)
    if key == "lora_alpha":
        # An integer >= 1 rather than any number > 0: the engine takes an int and rejects
        # smaller values, and a request it would refuse must fail here, not later in the worker.
        return _int_in(value, param, LORA_ALPHA_RANGE, auto=False)
    if key == "lora_dropout":
        if not _is_number(value) or not 0 <= value < 1:
            raise _bad(param, f"expected a number in [0, 1), got {value!r}.")
        return float(value)
    raise InvalidRequest(
        f"Unknown hyperparameter: '{param}'. Supported: {', '.join(KNOWN_KEYS)}.", param=param
    )


def parse(raw: Any, prefix: str) -> dict[str, Any]:
    """Check a caller's hyperparameters object; returns only the keys given, normalized.

    `prefix` is where the object sat in the request (for `param`).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"Invalid value for '{prefix}': expected an object.", param=prefix)
    return {key: _check_one(str(key), value, f"{prefix}.{key}") for key, value in raw.items()}


def merge(
    method_values: dict[str, Any], legacy_values: dict[str, Any], *, method_prefix: str
) -> dict[str, Any]:
    """Combine `method.supervised.hyperparameters` with the deprecated top-level form.

    Both forms are accepted, and giving the same value twice is harmless; two different values
    for one key are refused rather than silently picking one.
    """
    for key, value in legacy_values.items():
        if key in method_values and method_values[key] != value:
            raise InvalidRequest(
                f"Conflicting values for '{key}': 'hyperparameters.{key}' is {value!r} but "
                f"'{method_prefix}.{key}' is {method_values[key]!r}. Pass hyperparameters "
                "under 'method' only.",
                param=f"hyperparameters.{key}",
            )
    return DEFAULTS | legacy_values | method_values


def shown(requested: Mapping[str, Any], resolved: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job's hyperparameters as the API shows them: numbers once resolved, else "auto"."""
    values = DEFAULTS | dict(requested)
    for key in STANDARD_KEYS:
        if values[key] == AUTO and resolved and resolved.get(key) is not None:
            values[key] = resolved[key]
    return values


def engine_arguments(stored: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `worker.training.TrainingConfig`: "auto" becomes None."""
    values = DEFAULTS | dict(stored)
    return {key: (None if values[key] == AUTO else values[key]) for key in KNOWN_KEYS}
