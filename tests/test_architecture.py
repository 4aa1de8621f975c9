"""What may import what (docs/architecture.md), checked on every run of the suite.

The import contracts in pyproject.toml (`[tool.importlinter]`) read every import, inside
functions too: the shared core imports neither side, the training engine nothing of the web
stack, the API the workers only where it enqueues a job. A test plants one violation of each in a
copy of the tree to show the check can fail; another imports the whole core with torch and the
web stack made unimportable, as on a GPU machine that has only torch's side.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "worker", "tuna_core")
CONTRACTS = {"core", "engine", "api"}


def contracts() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract["name"] for contract in config["contracts"]}


def test_every_contract_is_configured() -> None:
    assert set(contracts()) == CONTRACTS


def test_the_import_contracts_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    output = capsys.readouterr().out
    assert exit_code == 0, output
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in output


def test_a_planted_violation_breaks_its_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    plants = {
        "tuna_core/dataset.py": "def _plant():\n    from app.errors import InvalidRequest\n",
        "worker/training/data.py": "def _plant():\n    import sqlalchemy\n",
        "app/files/validation.py": "def _plant():\n    from worker.training import data\n",
    }
    for path, code in plants.items():
        with open(tmp_path / path, "a") as module:
            module.write("\n\n" + code)
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
         " sys.exit(lint_imports_command())", "--no-cache"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    for name in contracts().values():
        assert f"{name} BROKEN" in result.stdout
    assert f"Contracts: 0 kept, {len(CONTRACTS)} broken." in result.stdout


def test_the_core_imports_without_torch_or_the_web_stack() -> None:
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        BLOCKED = {"torch", "transformers", "peft", "tokenizers", "jinja2", "fastapi",
                   "starlette", "pydantic", "sqlalchemy", "celery", "app", "worker"}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked")

        sys.meta_path.insert(0, Block())
        import tuna_core
        names = [m.name for m in pkgutil.walk_packages(tuna_core.__path__, "tuna_core.")]
        for name in names:
            importlib.import_module(name)
        try:
            import torch
        except ImportError:
            print("imported", len(names))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Every module and subpackage (a subpackage's __init__.py is its module), not the root.
    modules = [
        p
        for p in (ROOT / "tuna_core").rglob("*.py")
        if p.parent != ROOT / "tuna_core" or p.name != "__init__.py"
    ]
    assert result.stdout.split() == ["imported", str(len(modules))]
