"""The merged folder is the adapter's model, loadable by plain transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.export.conftest import QUESTION, Exported, greedy, logits
from worker.export import MERGE_DTYPES, UnsupportedExport, write_merged


def test_merged_logits_match_the_adapter(exported: Exported) -> None:
    from transformers import AutoModelForCausalLM

    merged = logits(exported.merged, exported.prompt_ids)
    adapted = logits(exported.peft, exported.prompt_ids)
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=0)
    # The adapter really changes the model, so a merge that dropped it would fail above.
    base = AutoModelForCausalLM.from_pretrained(exported.base_dir).eval()
    assert (logits(base, exported.prompt_ids) - adapted).abs().max() > 0.05


def test_merged_greedy_continuation_is_the_adapters(exported: Exported) -> None:
    tokens = greedy(exported.merged, exported.prompt_ids)
    assert tokens == greedy(exported.peft, exported.prompt_ids)
    assert len(set(tokens)) > 6  # a real continuation, not one token repeated


def test_merged_folder_is_a_plain_model_with_its_chat_template(exported: Exported) -> None:
    from transformers import AutoTokenizer

    files = {path.name for path in exported.merged_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    assert not list(exported.merged_dir.parent.glob(".merged-*"))  # no staging leftovers
    config = json.loads((exported.merged_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    generation = json.loads((exported.merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]

    source: Any = AutoTokenizer.from_pretrained(exported.adapter_dir)
    tokenizer: Any = AutoTokenizer.from_pretrained(exported.merged_dir)
    assert tokenizer.chat_template == source.chat_template
    rendered = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert rendered == source.apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")


def test_full_model_is_resaved_in_the_requested_dtype(exported: Exported, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    same = write_merged(exported.merged_dir, None, tmp_path / "same")
    reloaded = AutoModelForCausalLM.from_pretrained(same).eval()
    assert torch.equal(
        logits(reloaded, exported.prompt_ids), logits(exported.merged, exported.prompt_ids)
    )

    half = write_merged(exported.merged_dir, None, tmp_path / "bf16", dtype="bfloat16")
    config = json.loads((half / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(half, dtype="auto").eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    # bf16 weights *and* arithmetic: measured max |error| 0.11 on logits within about +-1.
    got = logits(model, exported.prompt_ids)
    want = logits(exported.merged, exported.prompt_ids)
    torch.testing.assert_close(got, want, atol=0.3, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8


def test_merge_in_bfloat16_adds_the_delta_in_float32(exported: Exported, tmp_path: Path) -> None:
    """The bf16 export is the float32 merge rounded once, not a merge of rounded weights."""
    from safetensors.torch import load_file

    out = write_merged(exported.base_dir, exported.adapter_dir, tmp_path / "m", "bfloat16")
    got = load_file(out / "model.safetensors")
    want = load_file(exported.merged_dir / "model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, want[name].to(torch.bfloat16)), name


def test_rewriting_replaces_the_folder(exported: Exported, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier export")
    write_merged(exported.base_dir, exported.adapter_dir, target)
    assert not (target / "stale.txt").exists()
    assert (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unknown_dtype_is_refused_before_any_work(exported: Exported, tmp_path: Path) -> None:
    assert "auto" in MERGE_DTYPES
    with pytest.raises(UnsupportedExport, match="int8"):
        write_merged(exported.base_dir, exported.adapter_dir, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()
