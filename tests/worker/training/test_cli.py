"""``python -m worker.training --config cfg.json`` as the worker or an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.model_fixtures import REPO_ROOT
from worker.training.config import TrainingConfig


def test_cli_prints_json_lines_and_trains(
    make_config: Callable[..., TrainingConfig], varied_file: Path, tmp_path: Path
) -> None:
    cfg = make_config(varied_file, n_epochs=1, validation_file=varied_file)
    config_path = tmp_path / "cfg.json"
    config_path.write_text(json.dumps(cfg.to_dict()))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "worker.training", "--config", str(config_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "event"
    assert "hyperparameters" in kinds
    assert [line["step"] for line in lines if line["type"] == "metrics"] == [1, 2, 3]
    assert kinds.count("checkpoint") == 1
    result = lines[-1]
    assert result["type"] == "result"
    assert result["total_steps"] == 3
    assert "full_valid_loss" in result["metrics"]
    assert Path(result["final_dir"], "adapter_config.json").is_file()


def test_cli_reports_errors_as_json(tmp_path: Path, model_cache: Path) -> None:
    config_path = tmp_path / "cfg.json"
    config_path.write_text(
        json.dumps(
            {
                "base_model": "no-such-model",
                "model_cache_dir": str(model_cache),
                "training_file": str(tmp_path / "missing.jsonl"),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker.training", "--config", str(config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["type"] == "error" and last["code"] == "model_not_found"
