"""`tuna models`: import a local adapter folder, list it, download it (streamed, and built by a
worker), delete it."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.app.client_cli.conftest import Tuna
from tests.conftest import WorkerProcess
from tests.model_fixtures import TINY, model_cache, tiny_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=2, target_modules=["q_proj"])
    )
    folder = tmp_path_factory.mktemp("cli-adapter") / "adapter"
    model.save_pretrained(folder)
    return folder


def test_import_download_rm(
    tuna: Tuna, worker: WorkerProcess, adapter_dir: Path, tmp_path: Path
) -> None:
    refused = tuna("models", "import", str(adapter_dir), "--base-model", "no-such-base")
    assert refused.exit_code == 1 and "no-such-base" in refused.stderr

    imported = tuna("models", "import", str(adapter_dir), "--base-model", TINY, "--suffix", "cli")
    assert imported.exit_code == 0, imported.stderr
    model = imported.stdout.strip()
    assert model.startswith(f"ft:{TINY}:") and ":cli:" in model
    assert model in tuna("models", "ls").stdout

    adapter = tuna("models", "download", model, "--format", "adapter", "-o", str(tmp_path))
    assert adapter.exit_code == 0, adapter.stderr
    archive = Path(adapter.stdout.strip())
    assert archive.parent == tmp_path and archive.name.endswith(".adapter.tar")
    with tarfile.open(archive) as tar:
        assert any(name.endswith("/adapter_model.safetensors") for name in tar.getnames())

    target = tmp_path / "model.gguf"
    built = tuna(
        "models", "download", model, "--format", "gguf", "--quantization", "q8_0",
        "-o", str(target), "--json",
    )  # fmt: skip
    assert built.exit_code == 0, built.stderr
    assert built.json() == {"model": model, "format": "gguf", "path": str(target)}
    assert target.read_bytes()[:4] == b"GGUF"
    assert not list(tmp_path.glob("*.part"))

    wrong = tuna("models", "download", model, "--format", "merged", "--quantization", "f16")
    assert wrong.exit_code == 1 and "--quantization" in wrong.stderr

    removed = tuna("models", "rm", model)
    assert removed.exit_code == 0 and f"Deleted {model}" in removed.stdout
    gone = tuna("models", "download", model, "--format", "adapter", "-o", str(tmp_path))
    assert gone.exit_code == 1 and "does not exist" in gone.stderr
