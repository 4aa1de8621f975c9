"""The scaling benchmark, small: one run against the same on two processes, on the tiny model.

Only what does not depend on the machine's speed is asserted: both runs trained, their losses
agree (the benchmark's parity check), the JSON has its fields. Never a duration or a ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_scaling.py"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("training_type", ["lora", "full"])
def test_the_bench_runs_and_the_two_runs_agree(
    capsys: pytest.CaptureFixture[str], training_type: str
) -> None:
    spec = importlib.util.spec_from_file_location("tuna_bench_train_scaling", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    args = ["--model", "tiny", "--steps", "2", "--batch-size", "4", "--tokens", "64"]
    assert module.main([*args, "--training-type", training_type, "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert result["processes"] == 2 and result["training_type"] == training_type
    assert result["loss_parity"] is True and result["max_loss_rel_diff"] < 1e-4
    assert result["one_process_tokens_per_s"] > 0 and result["n_processes_tokens_per_s"] > 0
    assert out.strip().splitlines()[-1].startswith("scaling ")
