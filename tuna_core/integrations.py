"""A fine-tuning job's `integrations`: the supported types, their fields, and the check.

One definition for the API (job creation names the exact `param` of a bad value) and the worker
(`worker/integrations/`, which logs a job's run to each one). OpenAI's shape:
``[{"type": "wandb", "wandb": {"project": "...", "name": null, "entity": null, "tags": [...]}}]``,
and Tuna's ``{"type": "mlflow", "mlflow": {"experiment_name": "...", "run_name": null,
"tags": {...}}}``. Where the runs go (W&B's mode, MLflow's tracking URI) is the server's setting,
never the caller's: an API caller cannot point the server at an address of its choosing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tuna_core.json_types import described_kind

FieldKind = Literal["string", "string_list", "string_map"]

# OpenAI's list holds at most 5 integrations; each type may appear once.
MAX_INTEGRATIONS = 5
MAX_STRING = 128  # W&B project, entity and run names; MLflow experiment and run names: 256
MAX_TAG = 64  # W&B's limit on one tag
MAX_TAGS = 50
MAX_MLFLOW_TAG_KEY = 250  # MLflow's limits
MAX_MLFLOW_TAG_VALUE = 5000
# Tags the worker sets on a MLflow run itself; `tuna.job_id` finds the run again on resume, so a
# caller may not set (or spoof) any tag under this prefix.
RESERVED_TAG_PREFIX = "tuna."


@dataclass(frozen=True)
class IntegrationField:
    kind: FieldKind
    required: bool = False
    max_length: int = MAX_STRING


# type -> its object's fields. Every other key is refused, so a typo never silently drops.
INTEGRATION_FIELDS: dict[str, dict[str, IntegrationField]] = {
    "wandb": {
        "project": IntegrationField("string", required=True),
        "name": IntegrationField("string"),
        "entity": IntegrationField("string"),
        "tags": IntegrationField("string_list", max_length=MAX_TAG),
    },
    "mlflow": {
        "experiment_name": IntegrationField("string", required=True, max_length=256),
        "run_name": IntegrationField("string", max_length=256),
        "tags": IntegrationField("string_map", max_length=MAX_MLFLOW_TAG_VALUE),
    },
}
SUPPORTED_INTEGRATIONS: tuple[str, ...] = tuple(INTEGRATION_FIELDS)
# How the job's events and errors name each one.
INTEGRATION_NAMES = {"wandb": "Weights & Biases", "mlflow": "MLflow"}


class IntegrationConfigError(ValueError):
    """An `integrations` entry the server refuses; ``param`` is the exact request parameter
    (``integrations[0].wandb.project``), ``message`` the sentence for the error envelope."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.message = message
        self.param = param


def check_integrations(value: Any, param: str = "integrations") -> list[dict[str, Any]] | None:
    """The integrations as stored: as given, once every entry is checked; raises
    `IntegrationConfigError` naming the first bad value. Read them with `settings_of`."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise IntegrationConfigError(f"expected an array, got {described_kind(value)}", param)
    if len(value) > MAX_INTEGRATIONS:
        raise IntegrationConfigError(
            f"at most {MAX_INTEGRATIONS} integrations, got {len(value)}", param
        )
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        entry = check_integration(item, where)
        if entry["type"] in seen:
            raise IntegrationConfigError(
                f"a job takes one {entry['type']} integration; it is given twice", f"{where}.type"
            )
        seen.add(entry["type"])
        checked.append(entry)
    return checked


def check_integration(item: Any, param: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise IntegrationConfigError(
            f"expected an object with a 'type', got {described_kind(item)}", param
        )
    kind = item.get("type")
    if kind is None:
        raise IntegrationConfigError("missing required parameter 'type'", f"{param}.type")
    if not isinstance(kind, str) or kind not in INTEGRATION_FIELDS:
        shown = repr(kind) if isinstance(kind, str) else described_kind(kind)
        raise IntegrationConfigError(
            f"unsupported integration type {shown}; supported: {', '.join(SUPPORTED_INTEGRATIONS)}",
            f"{param}.type",
        )
    for key in item:
        if key not in ("type", kind):
            raise IntegrationConfigError(
                f"unknown parameter {key!r}: the settings of a {kind} integration go under "
                f"{kind!r}",
                f"{param}.{key}",
            )
    body = item.get(kind)
    if not isinstance(body, Mapping):
        if body is None:
            raise IntegrationConfigError(f"missing required parameter {kind!r}", f"{param}.{kind}")
        raise IntegrationConfigError(
            f"expected an object, got {described_kind(body)}", f"{param}.{kind}"
        )
    fields = INTEGRATION_FIELDS[kind]
    for key in body:
        if key not in fields:
            raise IntegrationConfigError(
                f"unknown parameter {key!r} (allowed: {', '.join(fields)})",
                f"{param}.{kind}.{key}",
            )
    for key, spec in fields.items():
        _check_field(body.get(key), spec, f"{param}.{kind}.{key}", kind)
    return {"type": kind, kind: dict(body)}


def settings_of(entry: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A stored (checked) entry: its type, and its settings with every field present (unset
    ones None)."""
    kind = str(entry["type"])
    body = entry.get(kind) or {}
    return kind, {key: body.get(key) for key in INTEGRATION_FIELDS[kind]}


def _check_field(value: Any, spec: IntegrationField, param: str, kind: str) -> Any:
    if value is None:
        if spec.required:
            raise IntegrationConfigError(
                f"missing required parameter (a {kind} integration needs it)", param
            )
        return None
    if spec.kind == "string":
        return _string(value, spec.max_length, param)
    if spec.kind == "string_list":
        if not isinstance(value, list):
            raise IntegrationConfigError(
                f"expected an array of strings, got {described_kind(value)}", param
            )
        if len(value) > MAX_TAGS:
            raise IntegrationConfigError(f"at most {MAX_TAGS} tags, got {len(value)}", param)
        return [_string(tag, spec.max_length, f"{param}[{i}]") for i, tag in enumerate(value)]
    if not isinstance(value, Mapping):
        raise IntegrationConfigError(
            f"expected an object of string values, got {described_kind(value)}", param
        )
    if len(value) > MAX_TAGS:
        raise IntegrationConfigError(f"at most {MAX_TAGS} tags, got {len(value)}", param)
    tags: dict[str, str] = {}
    for key, tag in value.items():
        if not key or len(key) > MAX_MLFLOW_TAG_KEY:
            raise IntegrationConfigError(
                f"a tag name is 1 to {MAX_MLFLOW_TAG_KEY} characters", f"{param}.{key}"
            )
        if key.startswith(RESERVED_TAG_PREFIX):
            raise IntegrationConfigError(
                f"tags starting with {RESERVED_TAG_PREFIX!r} are set by the server",
                f"{param}.{key}",
            )
        tags[key] = _string(tag, spec.max_length, f"{param}.{key}", allow_empty=True)
    return tags


def _string(value: Any, most: int, param: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise IntegrationConfigError(f"expected a string, got {described_kind(value)}", param)
    if not allow_empty and not value.strip():
        raise IntegrationConfigError("expected a non-empty string", param)
    if len(value) > most:
        raise IntegrationConfigError(f"at most {most} characters, got {len(value)}", param)
    return value
