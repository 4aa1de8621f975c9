"""Fixtures for the training engine: the tiny llama and its tokenizer (`tests.model_fixtures`),
datasets and configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model_fixtures import TINY, model_cache, tiny_dir, tokenizer
from tests.worker.training.helpers import chat, write_jsonl

__all__ = ["model_cache", "tiny_dir", "tokenizer"]  # fixtures, made this folder's own
from worker.training.config import TrainingConfig

# The tiny model's matrices are too small to gain from threads, and on a shared 2-core machine
# spinning OpenMP workers made these tests 2x slower; one thread is also what CI boxes give.
torch.set_num_threads(1)


@pytest.fixture
def repetitive_file(tmp_path: Path) -> Path:
    """Eight copies of one short conversation: any working trainer drives its loss down."""
    rows = [chat("Say the magic word.", "Banana banana banana.") for _ in range(8)]
    return write_jsonl(tmp_path / "repetitive.jsonl", rows)


@pytest.fixture
def varied_file(tmp_path: Path) -> Path:
    """Six different chats (weights, a system prompt, content as text parts).

    One format per file, as the upload demands: legacy prompt/completion files are separate.
    """
    rows: list[Any] = [
        chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(4)
    ]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "You answer in French."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi!", "weight": 0},
                {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": "De rien."},
            ]
        }
    )
    rows.append(
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "The sky is"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "blue."}]},
            ]
        }
    )
    return write_jsonl(tmp_path / "varied.jsonl", rows)


@pytest.fixture
def make_config(tmp_path: Path, model_cache: Path) -> Callable[..., TrainingConfig]:
    def make(training_file: Path, output: str = "out", **overrides: Any) -> TrainingConfig:
        values: dict[str, Any] = {
            "base_model": TINY,
            "model_cache_dir": model_cache,
            "training_file": training_file,
            "output_dir": tmp_path / output,
            "n_epochs": 2,
            "batch_size": 2,
            "learning_rate_multiplier": 10.0,
            "seed": 1234,
            "device": "cpu",
            # Exact comparisons (resume, compile, packing) hold on every machine in float32;
            # bf16 ("auto" on a CPU with bf16 matmuls) is tested on its own.
            "precision": "float32",
        }
        values.update(overrides)
        return TrainingConfig(**values)

    return make
