"""Which base models this server offers: the engine's registry, filtered by the settings.

The registry lives in `worker.training.base_models` (no torch import at module level, so this is
cheap for the API). The tiny random test model is only offered when `enable_test_models` is on:
a production user must never be able to fine-tune random weights by accident.
"""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from worker.training.base_models import BaseModelInfo, list_base_models

TEST_MODELS = frozenset({"tuna-tiny-test"})


def _registry(local_models: dict[str, Path], include_test_models: bool) -> list[BaseModelInfo]:
    infos = list_base_models(local_models)
    if include_test_models:
        return infos
    return [info for info in infos if info.name not in TEST_MODELS]


def available_base_models(settings: Settings) -> list[BaseModelInfo]:
    return _registry(dict(settings.local_models), settings.enable_test_models)


def find_base_model(settings: Settings, name: str) -> BaseModelInfo | None:
    """The base model called `name` or one of its aliases (e.g. `HuggingFaceTB/...`), or None."""
    for info in available_base_models(settings):
        if name == info.name or name in info.aliases:
            return info
    return None
