"""Run the real `tuna` command (click's runner, in process) against the live `server`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from tests.conftest import LiveServer


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


Tuna = Callable[..., CliResult]


@pytest.fixture
def tuna(server: LiveServer, api_key: str) -> Tuna:
    """`tuna(*args, input=None)`: the CLI with TUNA_BASE_URL / TUNA_API_KEY set for this test."""
    env = {"TUNA_BASE_URL": server.url, "TUNA_API_KEY": api_key, "OPENAI_API_KEY": None}

    def run(*args: str, input: str | None = None, env_overrides: dict | None = None) -> CliResult:
        result: Result = CliRunner().invoke(
            main,
            list(args),
            input=input,
            env={**env, **(env_overrides or {})},
            catch_exceptions=False,
        )
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run
