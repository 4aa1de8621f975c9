"""Hugging Face hub models as base models (`TUNA_HUB_MODELS`), without any network.

A hub model is passed around like a local folder mapped to its folder in the model cache; it is
downloaded there once (through a temporary sibling, safetensors/config/tokenizer files only),
reused with no network afterwards, and refused clearly when it cannot be downloaded: an offline
deployment, a gated model without HF_TOKEN, a repository with only pickled weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError

from tuna_core.base_models import (
    DEFAULT_CONTEXT_LENGTH,
    HUB_ALLOW_PATTERNS,
    MAX_CONTEXT_LENGTH,
    ModelNotAvailable,
    UnknownBaseModel,
    check_hub_id,
    find_base_model,
    get_base_model_info,
    hub_folder,
    hub_model_folders,
    list_base_models,
    resolve_base_model,
)

HUB_ID = "tuna-tests/tiny-hub-model"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Any download attempt fails the test; its calls are recorded."""
    calls: list[dict[str, Any]] = []

    def refuse(*args: Any, **kwargs: Any) -> str:
        calls.append(kwargs)
        raise AssertionError("the hub was asked for a model")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    return calls


def _set_context(folder: Path, context: int) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = context
    (folder / "config.json").write_text(json.dumps(config))


def test_hub_ids_map_to_cache_folders(cache: Path) -> None:
    folders = hub_model_folders([HUB_ID], cache)
    assert folders == {HUB_ID: cache.resolve() / "hub" / "tuna-tests--tiny-hub-model"}
    assert check_hub_id("meta-llama/Llama-3.2-1B-Instruct") == "meta-llama/Llama-3.2-1B-Instruct"
    for bad in ("no-org", "a/b/c", "../x", "org/..", "org/na me", "/x"):
        with pytest.raises(ValueError, match="not a Hugging Face model id"):
            check_hub_id(bad)


def test_offline_and_not_in_the_cache_is_refused_clearly(
    cache: Path, no_network: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as caught:
        resolve_base_model(HUB_ID, cache, hub_model_folders([HUB_ID], cache))
    error = caught.value
    assert isinstance(error, UnknownBaseModel)  # callers that know only that still stop
    assert error.code == "model_not_available"
    message = str(error)
    assert f"'{HUB_ID}'" in message and "offline (HF_HUB_OFFLINE=1)" in message
    assert f"tuna models pull {HUB_ID}" in message
    assert not no_network and not (cache / "hub").exists()


def test_listed_before_the_download_and_with_its_real_context_after(
    cache: Path, tiny_dir: Path, no_network: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Already in the cache (a copy of the tiny model): used as it is, with no network even
    when the deployment is online."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folders = hub_model_folders([HUB_ID], cache)
    before = find_base_model(HUB_ID, folders)
    assert before is not None and before.name == HUB_ID
    assert (before.context_length, before.created) == (DEFAULT_CONTEXT_LENGTH, 0)
    assert HUB_ID in {info.name for info in list_base_models(folders)}

    target = hub_folder(cache, HUB_ID)
    shutil.copytree(tiny_dir, target)
    _set_context(target, 4096)
    assert resolve_base_model(HUB_ID, cache, folders) == target
    after = get_base_model_info(HUB_ID, folders)
    assert after.context_length == 4096 and after.created > 0
    _set_context(target, 131072)  # capped as local folders are
    assert get_base_model_info(HUB_ID, folders).context_length == MAX_CONTEXT_LENGTH
    assert not no_network


def test_a_download_lands_atomically_with_safe_files_only(
    cache: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    target = hub_folder(cache, HUB_ID)
    calls: list[dict[str, Any]] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        local = Path(kwargs["local_dir"])
        assert local.parent == target.parent and local != target and not target.exists()
        for item in tiny_dir.iterdir():
            shutil.copy2(item, local / item.name)
        (local / ".cache" / "huggingface").mkdir(parents=True)  # huggingface_hub's bookkeeping
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    folders = hub_model_folders([HUB_ID], cache)
    assert resolve_base_model(HUB_ID, cache, folders) == target
    assert resolve_base_model(HUB_ID, cache, folders) == target  # the second time: the cache
    assert len(calls) == 1
    call = calls[0]
    assert call["repo_id"] == HUB_ID and call["token"] == "hf_test_token"
    assert call["allow_patterns"] == list(HUB_ALLOW_PATTERNS)
    assert not any(p.endswith((".bin", ".pt", ".pth", ".pkl", "*")) for p in HUB_ALLOW_PATTERNS)
    assert (target / "config.json").is_file() and any(target.glob("*.safetensors"))
    assert not (target / ".cache").exists()
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_a_gated_model_without_a_token_names_hf_token(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def gated(repo_id: str, **kwargs: Any) -> str:
        error = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(error, "401 Client Error: access to model is restricted")
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(ModelNotAvailable) as caught:
        resolve_base_model(HUB_ID, cache, hub_model_folders([HUB_ID], cache))
    assert caught.value.code == "model_not_available"
    assert "is gated" in str(caught.value) and "set HF_TOKEN" in str(caught.value)
    assert [p for p in (cache / "hub").iterdir() if not p.name.endswith(".lock")] == []


def test_a_model_with_only_pickled_weights_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def only_config(repo_id: str, **kwargs: Any) -> str:
        (Path(kwargs["local_dir"]) / "config.json").write_text("{}")
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", only_config)
    with pytest.raises(ModelNotAvailable, match="does not load pickled"):
        resolve_base_model(HUB_ID, cache, hub_model_folders([HUB_ID], cache))
    assert not hub_folder(cache, HUB_ID).exists()
