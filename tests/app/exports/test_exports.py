"""Downloads of fine-tuned models, end to end: a real worker trains and builds, each artifact is
loaded back the way its users load it (peft, transformers, transformers' GGUF loader) and must
answer the served model's greedy answers token for token.

Then back in: the downloaded adapter, uploaded and imported as a new model, answers the same.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.orm import ModelExport
from app.orm.base import utcnow
from tests.app.exports.conftest import TINY, Trained
from tests.conftest import LiveServer
from tuna_core.base_models import resolve_base_model

pytestmark = pytest.mark.slow

# Plain prompts through /v1/completions: the tiny model ends a chat turn at once (its training
# answers are a token or two), while a prompt it merely continues gives tokens to compare.
PROMPTS = ("What is 3 plus 3? The answer is", "Once upon a time", "def add(a, b):")
MAX_TOKENS = 8
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 plus 3?"},
]


def http(server: LiveServer, trained: Trained) -> httpx.Client:
    return server.http(trained.api_key)


def served_answers(server: LiveServer, trained: Trained, model: str) -> list[str]:
    client = server.client(trained.api_key)
    answers = []
    for prompt in PROMPTS:
        reply = client.completions.create(
            model=model, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS
        )
        answers.append(reply.choices[0].text)
    assert any(answer.strip() for answer in answers)  # something to compare
    return answers


def greedy_answers(model: Any, tokenizer: Any) -> list[str]:
    """What the served model answers, computed by plain transformers on the artifact with the
    artifact's own tokenizer: greedy, stopping at an end-of-turn token as the server does."""
    import torch

    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    answers = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=MAX_TOKENS,
                eos_token_id=stop,
                pad_token_id=stop[0],
            )
        answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


def same_chat_template(exported: Any, server: LiveServer) -> bool:
    """The artifact renders a conversation exactly as the base (and so training) does."""
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(tiny_base(server))
    kwargs = {"add_generation_prompt": True, "tokenize": False}
    return exported.apply_chat_template(CONVERSATION, **kwargs) == base.apply_chat_template(
        CONVERSATION, **kwargs
    )


def download(
    api: httpx.Client, model: str, params: dict[str, str], into: Path, timeout: float = 300
) -> Path:
    """Poll the download until it is ready (202 while a worker builds it), then save it."""
    deadline = time.monotonic() + timeout
    statuses = []
    while True:
        response = api.get(f"/v1/models/{model}/content", params=params)
        if response.status_code == 200:
            break
        assert response.status_code == 202, response.text
        assert response.headers["retry-after"]
        body = response.json()
        assert body["object"] == "model.export" and body["model"] == model
        statuses.append(body["status"])
        assert time.monotonic() < deadline, statuses
        time.sleep(0.5)
    disposition = response.headers["content-disposition"]
    name = disposition.split('filename="')[1].rstrip('"')
    assert "/" not in name and ":" not in name
    path = into / name
    path.write_bytes(response.content)
    if "content-length" in response.headers:
        assert int(response.headers["content-length"]) == len(response.content)
    return path


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(into, filter="data")
    assert not any(name.endswith(".pt") for name in names), names  # no trainer state
    (folder,) = {name.split("/")[0] for name in names}
    return into / folder


def tiny_base(server: LiveServer) -> Path:
    return resolve_base_model(TINY, server.settings.resolved_model_cache_dir)


def test_adapter_is_streamed_and_answers_like_the_served_model(
    server: LiveServer, trained: Trained, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with http(server, trained) as api:
        archive = download(api, trained.lora, {"format": "adapter"}, tmp_path)
    assert archive.name.endswith(".adapter.tar")
    folder = unpack(archive, tmp_path)
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY  # the base's name, not a server folder
    base = AutoModelForCausalLM.from_pretrained(tiny_base(server), dtype="float32")
    model = PeftModel.from_pretrained(base, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert same_chat_template(tokenizer, server)
    assert greedy_answers(model, tokenizer) == served_answers(server, trained, trained.lora)


def test_merged_lora_is_built_by_a_worker_and_answers_like_the_served_model(
    server: LiveServer, trained: Trained, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with http(server, trained) as api:
        first = api.get(f"/v1/models/{trained.lora}/content", params={"format": "merged"})
        assert first.status_code in (200, 202)
        archive = download(api, trained.lora, {"format": "merged"}, tmp_path)
        listed = api.get(f"/v1/models/{trained.lora}/exports").json()["data"]
    assert [(e["format"], e["status"]) for e in listed if e["format"] == "merged"] == [
        ("merged", "succeeded")
    ]
    folder = unpack(archive, tmp_path)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert not (folder / "adapter_config.json").exists()  # merged: plain transformers
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert same_chat_template(tokenizer, server)
    assert greedy_answers(model, tokenizer) == served_answers(server, trained, trained.lora)


@pytest.mark.parametrize("quantization", ["f16", "q8_0"])
def test_gguf_answers_like_the_served_model(
    server: LiveServer, trained: Trained, tmp_path: Path, quantization: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    params = {"format": "gguf", "quantization": quantization}
    with http(server, trained) as api:
        path = download(api, trained.lora, params, tmp_path)
    assert path.name.endswith(f".{quantization}.gguf")

    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields["tokenizer.chat_template"]
    from transformers import AutoTokenizer as _Tokenizer

    template = bytes(field.parts[field.data[0]]).decode()
    assert template == _Tokenizer.from_pretrained(tiny_base(server)).chat_template
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True)
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert same_chat_template(tokenizer, server)
    assert greedy_answers(model, tokenizer) == served_answers(server, trained, trained.lora)


def test_full_model_exports(server: LiveServer, trained: Trained, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with http(server, trained) as api:
        refused = api.get(f"/v1/models/{trained.full}/content", params={"format": "adapter"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "format"
        assert "full fine-tune" in refused.json()["error"]["message"]
        # Its own folder: streamed at once, no build.
        merged = api.get(f"/v1/models/{trained.full}/content", params={"format": "merged"})
        assert merged.status_code == 200
        gguf_path = download(api, trained.full, {"format": "gguf"}, tmp_path)
    archive = tmp_path / "full.tar"
    archive.write_bytes(merged.content)
    folder = unpack(archive, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert same_chat_template(tokenizer, server)
    assert greedy_answers(model, tokenizer) == served_answers(server, trained, trained.full)
    assert gguf_path.name.endswith(".f16.gguf")


def test_bad_requests_name_the_parameter(server: LiveServer, trained: Trained) -> None:
    with http(server, trained) as api:
        url = f"/v1/models/{trained.lora}/content"
        cases = [
            (url, {"format": "onnx"}, 400, "format"),
            (url, {"format": "merged", "quantization": "q8_0"}, 400, "quantization"),
            (url, {"format": "gguf", "quantization": "q3_k"}, 400, "quantization"),
            (f"/v1/models/{TINY}/content", {"format": "merged"}, 400, "model"),
            (
                "/v1/models/ft:tuna-tiny-test:x::nope1234/content",
                {"format": "merged"},
                404,
                "model",
            ),
        ]
        for path, params, status, param in cases:
            response = api.get(path, params=params)
            assert response.status_code == status, (params, response.text)
            assert response.json()["error"]["param"] == param, response.text
        missing = api.get(url)
        assert missing.status_code == 400 and "format" in missing.json()["error"]["message"]


def test_a_lost_build_is_sent_again(server: LiveServer, trained: Trained, tmp_path: Path) -> None:
    """A worker that died mid-build stops renewing its lease: the next ask sends it again."""
    with http(server, trained) as api:
        created = api.post(
            f"/v1/models/{trained.lora}/exports", json={"format": "gguf", "quantization": "bf16"}
        )
        assert created.status_code == 200, created.text
        export_id = created.json()["id"]
        with server.app.state.db.session_scope() as session:
            # As if a worker had claimed it and died: running, lease run out, message consumed.
            session.execute(
                update(ModelExport)
                .where(ModelExport.id == export_id, ModelExport.status == "queued")
                .values(status="running", worker_id="dead:1", lease_expires_at=utcnow())
            )
        path = download(api, trained.lora, {"format": "gguf", "quantization": "bf16"}, tmp_path)
    assert path.stat().st_size > 0


def test_deleting_a_model_removes_its_exports(
    server: LiveServer, trained: Trained, tmp_path: Path
) -> None:
    """On a model of its own (imported from the downloaded adapter, which must answer the same
    as the model it came from), so the other tests keep theirs."""
    with http(server, trained) as api:
        archive = download(api, trained.lora, {"format": "adapter"}, tmp_path)
        file_id = api.post(
            "/v1/files",
            files={"file": (archive.name, archive.read_bytes(), "application/x-tar")},
            data={"purpose": "user_data"},
        ).json()["id"]
        imported = api.post("/v1/models", json={"file_id": file_id, "suffix": "back"})
        assert imported.status_code == 200, imported.text
        model = imported.json()["id"]
        assert model.startswith(f"ft:{TINY}:") and ":back:" in model
        assert model in [m["id"] for m in api.get("/v1/models").json()["data"]]
        served = served_answers(server, trained, trained.lora)
        assert served_answers(server, trained, model) == served

        download(api, model, {"format": "gguf", "quantization": "q8_0"}, tmp_path)
        (export,) = api.get(f"/v1/models/{model}/exports").json()["data"]
        files = server.settings.resolved_storage_dir / "exports" / export["id"]
        assert files.is_dir()
        assert api.delete(f"/v1/models/{model}").status_code == 200
        assert api.get(f"/v1/models/{model}/exports").status_code == 404
    deadline = time.monotonic() + 10
    while files.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not files.exists()
    with server.app.state.db.session_scope() as session:
        assert session.query(ModelExport).filter(ModelExport.model_id == model).count() == 0
