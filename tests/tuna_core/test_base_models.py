"""The base model registry: bundled names, aliases, local folders, caching."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuna_core.base_models import (
    BASE_MODELS,
    UnknownBaseModel,
    canonical_name,
    list_base_models,
    resolve_base_model,
)


def test_registry_names_and_aliases() -> None:
    assert {"SmolLM2-135M-Instruct", "tuna-tiny-test"} <= set(BASE_MODELS)
    assert canonical_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert BASE_MODELS["SmolLM2-135M-Instruct"].context_length == 2048


def test_unknown_name_raises(tmp_path: Path) -> None:
    with pytest.raises(UnknownBaseModel):
        resolve_base_model("gpt-4o", tmp_path)


def test_tiny_model_is_cached_and_loadable(tiny_dir: Path, model_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert resolve_base_model("tuna-tiny-test", model_cache) == tiny_dir  # second call: cached
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.num_hidden_layers == 2
    assert "<|im_start|>" in tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)
    assert not list(model_cache.glob(".tuna-tiny-test-*")), "temporary build folder left behind"


def test_local_models_are_bases(tiny_dir: Path, tmp_path: Path) -> None:
    local = {"my-llama": tiny_dir}
    assert resolve_base_model("my-llama", tmp_path / "cache", local) == tiny_dir
    info = {m.name: m for m in list_base_models(local)}["my-llama"]
    assert info.context_length == 2048
    assert info.created > 0
    with pytest.raises(UnknownBaseModel):
        resolve_base_model("gone", tmp_path, {"gone": tmp_path / "missing"})
