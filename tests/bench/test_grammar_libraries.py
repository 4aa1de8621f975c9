"""The grammar-library benchmark, small: llguidance (Tuna's dependency) on SmolLM2's tokenizer.

Runs `bench/grammar_libraries.py` for real on the tiny model's tokenizer (SmolLM2's) with short
documents.  Only what does not depend on the machine's speed is asserted: both grammars compiled,
every valid token was allowed and accepted, the invalid ones refused, the schema features
covered, the last line names a library.  Never a duration.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest.importorskip("torch")
pytest.importorskip("llguidance")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grammar_libraries.py"
TOKENS = 40


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuna_bench_grammar_libraries", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_grammar_libraries_measures_llguidance(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()

    results = bench.main(
        [
            "--model",
            "tuna-tiny-test",
            "--libraries",
            "llguidance",
            "--tokens",
            str(TOKENS),
            "--batch",
            "3",
        ]
    )

    out = capsys.readouterr().out
    [result] = results
    assert result.name == "llguidance" and not result.skipped
    assert set(result.runs) == {"json_object", "json_schema"}
    for label, run in result.runs.items():
        assert not run.errors, (label, run.errors, out)
        assert run.tokens >= TOKENS
        assert len(run.mask_ms) == run.tokens and len(run.consume_ms) == run.tokens
        assert all(math.isfinite(x) and x >= 0 for x in run.mask_ms)
    assert result.correct
    assert set(result.coverage) == set(bench.COVERAGE)
    assert all(result.coverage.values()), result.coverage  # it reports what it cannot enforce
    assert "llguidance" in out and "json_schema" in out
    assert out.splitlines()[-1] == "recommendation llguidance"


def test_unknown_library_is_refused() -> None:
    bench = load_bench()

    with pytest.raises(SystemExit):
        bench.main(["--libraries", "nope"])
