"""Per-row adapters against peft itself: one forward pass mixing adapters (and the base) gives
each row the logits peft gives that row with only its adapter active."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.inference.lora import RowAdapters, enable_row_adapters, row_adapters
from tests.app.inference.conftest import MODEL_CACHE, TINY, ModelFolders
from tuna_core.base_models import resolve_base_model


def wrapped(folders: list[Path]) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        resolve_base_model(TINY, MODEL_CACHE), dtype=torch.float32
    ).eval()
    peft = PeftModel.from_pretrained(base, folders[0], adapter_name="a0")
    for i, folder in enumerate(folders[1:], start=1):
        peft.load_adapter(folder, adapter_name=f"a{i}")
    return peft


def dora_adapter(tmp_path: Path) -> Path:
    """An adapter the stacked path does not cover (DoRA), to exercise peft's per-row fallback."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(TINY, MODEL_CACHE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        config = LoraConfig(
            r=2, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False
        )
        peft = get_peft_model(model, config)
    peft.save_pretrained(tmp_path / "dora")
    return tmp_path / "dora"


@pytest.mark.parametrize("with_dora", [False, True], ids=["stacked", "with-peft-fallback"])
def test_each_row_gets_its_own_adapter(
    model_folders: ModelFolders, tmp_path: Path, with_dora: bool
) -> None:
    folders = [model_folders.adapter_a, model_folders.adapter_b]
    if with_dora:
        folders.append(dora_adapter(tmp_path))
    peft = wrapped(folders)
    names: list[str | None] = [None, "a0", "a1", "a0", *(["a2"] if with_dora else [])]
    ids = torch.randint(10, 200, (len(names), 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = []
        for row, name in enumerate(names):
            if name is None:
                with peft.disable_adapter():
                    expected.append(peft(input_ids=ids[row : row + 1]).logits)
            else:
                peft.set_adapter(name)
                expected.append(peft(input_ids=ids[row : row + 1]).logits)
        assert enable_row_adapters(peft.base_model.model) > 0
        with row_adapters(RowAdapters(names)):
            mixed = peft.base_model.model(input_ids=ids).logits
        with row_adapters(RowAdapters(["a1"] * len(names))):  # one adapter for all rows
            single = peft.base_model.model(input_ids=ids).logits
        peft.set_adapter("a1")
        single_expected = peft(input_ids=ids).logits
        with peft.disable_adapter():
            base_row1 = peft(input_ids=ids[1:2]).logits
    for row in range(len(names)):
        torch.testing.assert_close(mixed[row : row + 1], expected[row], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single, single_expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed[1:2], base_row1, atol=1e-3)  # the adapter really applies
