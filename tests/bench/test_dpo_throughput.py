"""``bench/train_throughput.py --method dpo`` runs end to end on the tiny model (no timing).

The engine's DPO and ``trl.DPOTrainer`` see the same pairs tokenized the same way, both start at
loss log 2 (policy == reference) and stay together; the output ends with ``speedup X.XX``.
"""

from __future__ import annotations

import math
import os
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tests.bench.test_train_paths import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.mark.parametrize("reference", ["precomputed", "per-step"])
def test_dpo_benchmark_runs_end_to_end_on_the_tiny_model(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], reference: str
) -> None:
    argv = (
        "--method dpo --model tiny --steps 2 --batch-size 2 --max-len 96 --median-len 48 "
        f"--compile off --trl-reference {reference}"
    )
    result = bench.main(argv.split(" "))

    lines = capsys.readouterr().out.splitlines()
    output = "\n".join(lines)
    assert result.loss_parity, output
    assert "loss parity: ok" in lines
    assert lines[-1].startswith("speedup ")
    assert float(lines[-1].split()[1]) == pytest.approx(result.median_ratio, abs=0.006)
    assert len(result.records) == 3  # 1 warmup + 2 measured rounds
    # Same pairs, same tokens: trl's tokenization of the messages matches the engine's.
    assert result.token_mismatches == 0, output
    assert all(r.baseline_tokens == r.real_tokens for r in result.records)
    first = result.records[0]
    assert first.baseline_loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.engine_loss == pytest.approx(math.log(2), abs=1e-5)
    assert result.engine_peak_mem_mb > result.engine_step_mem_mb  # the weights count too
    assert result.memory_ratio == pytest.approx(
        result.engine_peak_mem_mb / result.baseline_peak_mem_mb
    )
    prefixes = (
        "baseline (trl DPOTrainer",
        "engine (pairs packed",
        "per-step ratio:",
        "peak memory (own weights",
        "reference log-probs:",
        "tokenization:",
    )
    for prefix in prefixes:
        assert any(line.startswith(prefix) for line in lines), prefix
    if reference == "precomputed":
        assert result.baseline_reference_s > 0 and result.engine_reference_s > 0
        assert all(r.engine_reference_s == 0 for r in result.records)
    else:
        assert result.baseline_reference_s == 0  # trl scores the reference inside its steps
        shares = sum(r.engine_reference_s for r in result.records)
        assert shares == pytest.approx(result.engine_reference_s)  # charged once, in full
