"""QLoRA (`quantization: "4bit"`): the engine's own checks. A 4-bit base needs CUDA and
bitsandbytes; on a CPU the run is refused with `qlora_needs_cuda` before any weight is loaded,
and the config refuses 4 bits with full fine-tuning. (Training in 4 bits needs a GPU: not here.)"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.training.helpers import Recorder
from worker.training import TrainingConfig, TrainingError, train
from worker.training import quantization as qlora


def test_a_cpu_run_is_refused_with_its_code(
    make_config: Callable[..., TrainingConfig], repetitive_file: Path
) -> None:
    config = make_config(repetitive_file, quantization="4bit")
    recorder = Recorder()
    with pytest.raises(TrainingError) as caught:
        train(config, recorder)
    assert caught.value.code == "qlora_needs_cuda"
    assert caught.value.param == "quantization"
    assert "needs a CUDA GPU" in str(caught.value) and "cpu" in str(caught.value)
    assert not recorder.metrics and not (config.output_dir / "final").exists()


def test_without_bitsandbytes_the_refusal_names_the_extra(
    make_config: Callable[..., TrainingConfig],
    repetitive_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CUDA device but without bitsandbytes (whether or not it is installed here)."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "bitsandbytes" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    config = make_config(repetitive_file, quantization="4bit")
    with pytest.raises(TrainingError) as caught:
        qlora.check_qlora_supported(config, torch.device("cuda", 0))
    assert caught.value.code == "qlora_needs_cuda"
    assert "bitsandbytes" in str(caught.value) and "tuna[gpu]" in str(caught.value)


def test_the_config_checks_the_value_and_the_combination(
    make_config: Callable[..., TrainingConfig], repetitive_file: Path
) -> None:
    assert make_config(repetitive_file).quantization == "none"
    with pytest.raises(ValueError, match="quantization: expected one of 'none', '4bit'"):
        make_config(repetitive_file, quantization="8bit")
    with pytest.raises(ValueError, match="needs training_type 'lora', not 'full'"):
        make_config(repetitive_file, quantization="4bit", training_type="full")
    config = make_config(repetitive_file, quantization="4bit")
    assert TrainingConfig.from_dict(config.to_dict()).quantization == "4bit"
