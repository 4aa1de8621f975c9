"""A job's hyperparameters: parsing the request, the stored form, and what the job shows.

Checked by hand rather than by pydantic so that every error names the exact parameter the caller
sent (`hyperparameters.n_epochs` or `method.dpo.hyperparameters.beta`): pydantic's locations for
`"auto" | int` unions carry the union branch, which is no use to a client.

The names, ranges and defaults are `tuna_core.hyperparameters`, which the engine checks with too;
which keys a job may set depends on its method (`keys_for`: DPO adds `beta`). The stored form
(the job's `hyperparameters` column) is complete: every key of the method present, "auto" kept
as the string "auto", the extensions filled with their defaults. The worker turns it into engine
arguments with `tuna_core.hyperparameters.engine_arguments`; the API shows "auto" until
`resolved_hyperparameters` exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import InvalidRequest
from tuna_core.hyperparameters import (
    AUTO,
    METHOD_KEYS,
    STANDARD_KEYS,
    InvalidHyperparameter,
    check_value,
    defaults_for,
    keys_for,
)
from tuna_core.hyperparameters import check_combination as tuna_check_combination


def _check_one(key: str, value: Any, param: str, method: str) -> Any:
    allowed = keys_for(method)
    if key not in allowed:
        owners = [name for name, keys in METHOD_KEYS.items() if key in keys]
        if owners:
            raise InvalidRequest(
                f"Unknown hyperparameter for the {method} method: '{param}'. '{key}' is a "
                f"hyperparameter of the {' and '.join(owners)} method. Supported: "
                f"{', '.join(allowed)}.",
                param=param,
            )
        raise InvalidRequest(
            f"Unknown hyperparameter: '{param}'. Supported: {', '.join(allowed)}.", param=param
        )
    try:
        return check_value(key, value)
    except InvalidHyperparameter as exc:
        raise InvalidRequest(f"Invalid value for '{param}': {exc.reason}", param=param) from None


def parse(raw: Any, prefix: str, method: str = "supervised") -> dict[str, Any]:
    """Check a caller's hyperparameters object for a job of `method`; returns only the keys
    given, normalized.

    `prefix` is where the object sat in the request (for `param`).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"Invalid value for '{prefix}': expected an object.", param=prefix)
    return {
        key: _check_one(str(key), value, f"{prefix}.{key}", method) for key, value in raw.items()
    }


def merge(
    method_values: dict[str, Any],
    legacy_values: dict[str, Any],
    *,
    method_prefix: str,
    method: str = "supervised",
) -> dict[str, Any]:
    """Combine `method.<type>.hyperparameters` with the deprecated top-level form, over the
    method's defaults.

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
    return defaults_for(method) | legacy_values | method_values


def check_combination(values: Mapping[str, Any], given: Mapping[str, str], method: str) -> None:
    """The values together (QLoRA needs LoRA, also when a continued job's source settles
    `training_type`): a 400 naming the parameter the caller set (`given`: where each key was)."""
    try:
        tuna_check_combination(values)
    except InvalidHyperparameter as exc:
        param = given.get(exc.key, f"method.{method}.hyperparameters.{exc.key}")
        raise InvalidRequest(f"Invalid value for '{param}': {exc.reason}", param=param) from None


def shown(
    requested: Mapping[str, Any],
    resolved: Mapping[str, Any] | None,
    method: str = "supervised",
) -> dict[str, Any]:
    """The job's hyperparameters as the API shows them: numbers once resolved, else "auto".

    Every key of the method, in `keys_for(method)` order.
    """
    values = defaults_for(method) | dict(requested)
    for key in (*STANDARD_KEYS, *METHOD_KEYS[method]):
        if values[key] == AUTO and resolved and resolved.get(key) is not None:
            values[key] = resolved[key]
    return {key: values[key] for key in keys_for(method)}
