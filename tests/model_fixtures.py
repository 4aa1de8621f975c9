"""The tiny test model and its tokenizer, for every test folder that renders or trains.

Converted/built models are cached under ``<repo>/var/model-cache`` (git-ignored) so they survive
test runs; building them is safe under concurrent runs (atomic rename).  A conftest makes these
fixtures its own by importing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tuna_core.base_models import resolve_base_model

# Read when transformers is first imported (inside fixtures, after this): never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "tuna-tiny-test"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return REPO_ROOT / "var" / "model-cache"


@pytest.fixture(scope="session")
def tiny_dir(model_cache: Path) -> Path:
    return resolve_base_model(TINY, model_cache)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)
