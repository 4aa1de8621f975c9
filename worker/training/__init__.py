"""Tuna's training engine: a library handed a typed config; no web, DB, queue or environment.

The worker adapts it to Celery and the database; ``python -m worker.training --config cfg.json``
runs it alone and prints JSON lines.

torch and transformers take seconds to import, and the API process only needs the model
registry and the config types, so the names from ``data`` and ``sft`` are imported on first use
(PEP 562 module ``__getattr__``) rather than here.
"""

from __future__ import annotations

import importlib
from typing import Any

from worker.training.base_models import (
    BASE_MODELS,
    BaseModelInfo,
    UnknownBaseModel,
    list_base_models,
    resolve_base_model,
)
from worker.training.callbacks import NullCallbacks, PrintCallbacks, TrainingCallbacks
from worker.training.config import ResolvedHyperparameters, TrainingConfig, resolve_hyperparameters

_LAZY = {
    "DataProblem": "worker.training.data",
    "DataReport": "worker.training.data",
    "ExampleTooLong": "worker.training.data",
    "InvalidExample": "worker.training.data",
    "validate_examples": "worker.training.data",
    "TrainingCancelled": "worker.training.sft",
    "TrainingError": "worker.training.sft",
    "TrainingPaused": "worker.training.sft",
    "TrainingResult": "worker.training.sft",
    "train": "worker.training.sft",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASE_MODELS",
    "BaseModelInfo",
    "DataProblem",
    "DataReport",
    "ExampleTooLong",
    "InvalidExample",
    "NullCallbacks",
    "PrintCallbacks",
    "ResolvedHyperparameters",
    "TrainingCallbacks",
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingError",
    "TrainingPaused",
    "TrainingResult",
    "UnknownBaseModel",
    "list_base_models",
    "resolve_base_model",
    "resolve_hyperparameters",
    "train",
    "validate_examples",
]
