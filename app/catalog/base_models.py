"""Which base models this server offers: the shared registry, filtered by the settings.

The registry is `tuna_core.base_models` (no torch import at module level, so this is cheap for
the API). Models with random weights (`for_tests`) are only offered when `enable_test_models` is
on: a production user must never be able to fine-tune random weights by accident.
"""

from __future__ import annotations

from app.config import Settings
from tuna_core.base_models import BaseModelInfo, find_base_model, list_base_models


def available_base_models(settings: Settings) -> list[BaseModelInfo]:
    return list_base_models(settings.base_model_folders, include_tests=settings.enable_test_models)


def find_offered_base_model(settings: Settings, name: str) -> BaseModelInfo | None:
    """The offered base model called `name` or one of its aliases, or None."""
    return find_base_model(
        name, settings.base_model_folders, include_tests=settings.enable_test_models
    )
