"""`POST /v1/models`: importing a model trained elsewhere, from an uploaded archive or a server
folder. What is refused is refused before anything is registered, naming its parameter; what is
accepted answers chat requests. (The round trip of an exported adapter is in
tests/app/exports.)"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, WorkerProcess
from tests.datasets import chat_jsonl
from tests.model_fixtures import TINY, model_cache, tiny_dir  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A LoRA adapter of the tiny model saved by plain peft, as a user's own training would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapter") / "my-adapter"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("full") / "my-model"
    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(folder)
    return folder


def tar_of(folder: Path, arcname: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname or folder.name)
    return buffer.getvalue()


def upload(api: httpx.Client, content: bytes, name: str = "model.tar.gz") -> str:
    response = api.post("/v1/files", files={"file": (name, content)}, data={"purpose": "user_data"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def import_model(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/models", json=body)


def error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def imported_ids(server: LiveServer) -> list[str]:
    folder = server.settings.resolved_storage_dir / "imports"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def api(server: LiveServer) -> httpx.Client:
    return server.http(server.new_key())


def test_an_uploaded_adapter_becomes_a_model_that_answers(
    server: LiveServer, api: httpx.Client, adapter_dir: Path
) -> None:
    file_id = upload(api, tar_of(adapter_dir))
    response = import_model(api, file_id=file_id, base_model=TINY, suffix="mine")
    assert response.status_code == 200, response.text
    model = response.json()
    assert model["object"] == "model" and model["id"].startswith(f"ft:{TINY}:")
    assert ":mine:" in model["id"]
    assert api.get(f"/v1/models/{model['id']}").json()["id"] == model["id"]
    chat = api.post(
        "/v1/chat/completions",
        json={"model": model["id"], "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 4, "temperature": 0},
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == model["id"]


def test_a_zip_of_a_full_model_imports(
    server: LiveServer, api: httpx.Client, full_dir: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in full_dir.rglob("*"):
            zf.write(path, path.relative_to(full_dir).as_posix())
    file_id = upload(api, buffer.getvalue(), "model.zip")
    missing_base = error(import_model(api, file_id=file_id))
    assert missing_base["param"] == "base_model"
    response = import_model(api, file_id=file_id, base_model=TINY)
    assert response.status_code == 200, response.text
    chat = api.post(
        "/v1/completions",
        json={"model": response.json()["id"], "prompt": "Once", "max_tokens": 3},
    )
    assert chat.status_code == 200, chat.text


def test_refusals_name_their_parameter_and_register_nothing(
    server: LiveServer, api: httpx.Client, adapter_dir: Path, tmp_path: Path
) -> None:
    before = imported_ids(server)
    good = upload(api, tar_of(adapter_dir))
    assert error(import_model(api))["param"] == "file_id"
    assert error(import_model(api, file_id=good, path="/tmp"))["param"] == "path"
    assert (
        error(import_model(api, file_id=good, base_model=TINY, suffix="a:b"))["param"] == "suffix"
    )
    assert error(import_model(api, file_id="file-nope", base_model=TINY), 404)["param"] == "file_id"

    not_archive = upload(api, b"just text\n", "notes.txt")
    assert error(import_model(api, file_id=not_archive))["code"] == "invalid_archive"

    unknown_base = error(import_model(api, file_id=good, base_model="gpt-17"))
    assert unknown_base["param"] == "base_model" and "gpt-17" in unknown_base["message"]

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for item in adapter_dir.iterdir():
        (pickled / item.name).write_bytes(item.read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    unsafe = error(import_model(api, file_id=upload(api, tar_of(pickled)), base_model=TINY))
    assert unsafe["code"] == "unsafe_weights" and "adapter_model.bin" in unsafe["message"]

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "adapter_config.json").write_text(
        (adapter_dir / "adapter_config.json").read_text()
    )
    _write_safetensors(
        mismatched / "adapter_model.safetensors",
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": [4, 999]},
    )
    wrong = error(import_model(api, file_id=upload(api, tar_of(mismatched)), base_model=TINY))
    assert wrong["code"] == "adapter_mismatch" and "999" in wrong["message"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    assert error(import_model(api, file_id=upload(api, tar_of(empty))))["code"] == (
        "invalid_model_folder"
    )

    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w") as tar:
        info = tarfile.TarInfo("../../outside.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    assert error(import_model(api, file_id=upload(api, escaping.getvalue())))["code"] == (
        "invalid_archive"
    )
    assert imported_ids(server) == before


def test_a_server_folder_imports_only_under_an_import_root(
    server: LiveServer,
    api: httpx.Client,
    adapter_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disabled = error(import_model(api, path=str(adapter_dir), base_model=TINY))
    assert disabled["param"] == "path" and "TUNA_IMPORT_ROOTS" in disabled["message"]

    monkeypatch.setattr(server.settings, "import_roots", [adapter_dir.parent])
    outside = error(import_model(api, path=str(tmp_path), base_model=TINY))
    assert outside["param"] == "path" and "import root" in outside["message"]
    sneaky = error(import_model(api, path=f"{adapter_dir}/../../..", base_model=TINY))
    assert sneaky["param"] == "path"

    response = import_model(api, path=str(adapter_dir), base_model=TINY)
    assert response.status_code == 200, response.text
    assert (adapter_dir / "adapter_model.safetensors").is_file()  # copied, never moved


def _write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * offset)


def test_an_imported_adapter_trains_further(
    server: LiveServer, api: httpx.Client, adapter_dir: Path, worker: WorkerProcess
) -> None:
    """Continued training keeps the imported adapter's own shape (from its adapter_config)."""
    model = import_model(api, file_id=upload(api, tar_of(adapter_dir)), base_model=TINY)
    assert model.status_code == 200, model.text
    training = api.post(
        "/v1/files",
        files={"file": ("train.jsonl", chat_jsonl(12))},
        data={"purpose": "fine-tune"},
    ).json()["id"]
    job = api.post(
        "/v1/fine_tuning/jobs",
        json={"model": model.json()["id"], "training_file": training, "auto_eval": False,
              "hyperparameters": {"n_epochs": 1}},
    )  # fmt: skip
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + 300
    while (body := api.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] not in {
        "succeeded",
        "failed",
        "cancelled",
    }:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert body["status"] == "succeeded", body["error"]
    events = [
        e["message"]
        for e in api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()[
            "data"
        ]
    ]
    assert any("rank 4, alpha 8" in message for message in events), events
