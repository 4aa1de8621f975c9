"""The upload benchmark, small: the server's memory must not grow with the size of an upload.

Runs `bench/upload_memory.py` for real (its own server process, a streamed 64 MiB body). Only
memory is asserted: it does not depend on how fast the machine is, unlike the timings the
benchmark also prints.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "upload_memory.py"
GROWTH_LIMIT_MB = 100.0


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tuna_bench_upload_memory", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("purpose", ["user_data", "fine-tune"])
def test_upload_memory_stays_flat(purpose: str, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()

    result = bench.main(["--size-mb", "64", "--purpose", purpose])

    assert result.status_code == 200
    assert result.size_mb >= 64
    assert result.memory_growth_mb < GROWTH_LIMIT_MB, capsys.readouterr().out
    assert capsys.readouterr().out.splitlines()[-1].startswith("memory_growth_mb ")
