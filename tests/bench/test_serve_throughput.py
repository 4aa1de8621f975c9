"""The serving benchmark, small: a real `tuna serve`, every scenario, the result's shape.

Runs `bench/serve_throughput.py` for real on the tiny model (its own server process, LoRA
adapters published into its database, the static-batch ceiling, streamed chat completions
through the openai SDK) at 1 and 8 clients and a few tokens.  Only what does not depend on the
machine's speed is asserted: every scenario and level ran, every request answered with usage, no
more tokens than asked, the JSON line has its fields.  Never a duration or a ratio.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("openai")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_throughput.py"
CONCURRENCY = (1, 8)
REQUESTS_PER_CLIENT = 2
MAX_TOKENS = 6
ADAPTERS = 2


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuna_bench_serve_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_serve_throughput_runs_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()

    result = bench.main(
        [
            "--model",
            "tuna-tiny-test",
            "--concurrency",
            ",".join(map(str, CONCURRENCY)),
            "--requests-per-client",
            str(REQUESTS_PER_CLIENT),
            "--max-tokens",
            str(MAX_TOKENS),
            "--adapters",
            str(ADAPTERS),
            "--ceiling-repeats",
            "1",
            "--device",
            "cpu",
            "--no-fail",
            "--json",
        ]
    )

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[-1] == f"targets_met {result.targets_met}/{len(result.targets)}", out
    report = json.loads(lines[-2])
    assert report["model"] == "tuna-tiny-test"
    assert report["max_tokens"] == MAX_TOKENS
    assert report["errors"] == 0, out
    assert set(report["ceiling_tokens_per_s"]) == {str(c) for c in CONCURRENCY}
    assert all(value > 0 for value in report["ceiling_tokens_per_s"].values())

    ran = {(level["scenario"], level["concurrency"]) for level in report["levels"]}
    assert ran == {(s, c) for s in bench.SCENARIOS for c in CONCURRENCY}
    for level in report["levels"]:
        where = f"{level['scenario']} at {level['concurrency']} clients"
        expected = level["concurrency"] * REQUESTS_PER_CLIENT
        assert level["requests"] == expected, where
        assert level["errors"] == 0, (where, level["first_error"])
        assert level["requests_with_usage"] == expected, where  # every stream ended with usage
        assert 1 <= level["min_completion_tokens"] <= level["max_completion_tokens"] <= MAX_TOKENS
        assert level["completion_tokens"] <= expected * MAX_TOKENS
        assert sum(level["finish_reasons"].values()) == expected
        for field in ("wall_s", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "latency_p50_s"):
            assert level[field] is not None and level[field] > 0, (where, field)
        assert level["vs_one_client"] is not None and level["vs_ceiling"] is not None
        if level["scenario"] == "multi-adapter":
            assert level["models"] == min(level["concurrency"], ADAPTERS), where
        else:
            assert level["models"] == 1, where

    # At 1 and 8 clients: 8x / 1x per scenario, the adapter mix at 8, the ceiling at both.
    assert [t["name"] for t in report["targets"]] == [
        *(f"{s}: 8 clients / 1 client" for s in bench.SCENARIOS),
        f"{ADAPTERS} adapters / one adapter at 8 clients",
        *(f"base: server / static batch at {c} clients" for c in CONCURRENCY),
    ]
    assert all(t["value"] is not None and t["value"] > 0 for t in report["targets"])
    assert report["targets_met"] == sum(t["passed"] for t in report["targets"])
    assert result.exit_code == 0  # --no-fail
