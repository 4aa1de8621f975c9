"""Tuna's training engine: a library handed a typed config; no web, DB, queue or environment.

The worker adapts it to Celery and the database; ``python -m worker.training --config cfg.json``
runs it alone and prints JSON lines.

The base-model registry, chat rendering and the hyperparameter ranges it shares with the API live
in ``tuna_core``.  torch and transformers take seconds to import, so the names from ``data`` and
``loop`` are imported on first use (PEP 562 module ``__getattr__``) rather than here.
"""

from __future__ import annotations

import importlib
from typing import Any

from worker.training.callbacks import NullCallbacks, PrintCallbacks, TrainingCallbacks
from worker.training.config import ResolvedHyperparameters, TrainingConfig, resolve_hyperparameters

_LAZY = {
    "DataProblem": "worker.training.data",
    "DataReport": "worker.training.data",
    "ExampleTooLong": "worker.training.data",
    "InvalidExample": "worker.training.data",
    "validate_examples": "worker.training.data",
    "TrainingCancelled": "worker.training.loop",
    "TrainingError": "worker.training.loop",
    "TrainingPaused": "worker.training.loop",
    "TrainingResult": "worker.training.loop",
    "train": "worker.training.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
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
    "resolve_hyperparameters",
    "train",
    "validate_examples",
]
